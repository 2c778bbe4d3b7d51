"""What every vqtok model directory shares: a ``config.json`` beside a ``model.safetensors``.

The tokenizer format (:mod:`vqtok.formats.tokenizer_dir`) and the decoder format
(:mod:`vqtok.formats.decoder_dir`) each own their keys and their error type; the
mechanics are here, once: the header every ``config.json`` starts with, the module spec
``{"class_path", "init_args"}`` rebuilt through the registry, an atomic save that refuses
to delete files it did not write, and a weight load that checks the file was written by
vqtok for this format and matches the model exactly. Nothing here unpickles or imports
code named by a file.
"""

from __future__ import annotations

import hashlib
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from vqtok import registry
from vqtok.formats.atomic import atomic_directory
from vqtok.formats.jsonfile import read_json, to_json
from vqtok.formats.schema import Anything, Const, Obj, Spec, Str, Version, validate

# Importing the building blocks registers them, so a config can name any of them.
from vqtok.models import VQAutoencoder  # noqa: F401
from vqtok.multimodal import MultimodalDecoder  # noqa: F401
from vqtok.quantizers import Quantizer  # noqa: F401

__all__ = [
    "CONFIG_NAME",
    "MODULE_SPEC",
    "OPTIONAL_SPEC",
    "WEIGHTS_MARKER",
    "WEIGHTS_NAME",
    "WEIGHTS_SHA256",
    "build_module",
    "file_sha256",
    "header_spec",
    "load_weights",
    "new_header",
    "read_model_config",
    "save_model_dir",
    "vqtok_version",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_MARKER = "vqtok.format"  # safetensors metadata key naming the directory's format

MODULE_SPEC = Obj({"class_path": Str(nonempty=True), "init_args": Anything()})
"""A module as ``{"class_path": registered name, "init_args": {...}}``; the registry checks
the init args when it builds the module."""

WEIGHTS_SHA256 = "weights_sha256"
OPTIONAL_SPEC: dict[str, Spec] = {
    "extra": Anything(),
    WEIGHTS_SHA256: Str(pattern="[0-9a-f]{64}", what="a SHA-256 in hex (64 digits)"),
}
"""Keys every ``config.json`` may hold: free metadata, and the SHA-256 of the weights file
(written by every save, verified at load; directories written before it existed load
without the check)."""


def vqtok_version() -> str:
    """The installed vqtok version, or ``"unknown"`` when run from an uninstalled tree."""
    try:
        return importlib_metadata.version("vqtok")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def header_spec(fmt: str, version: int, what: str) -> dict[str, Spec]:
    """The keys every ``config.json`` starts with (``what``: "tokenizer", "decoder")."""
    return {"format": Const(fmt, f"a vqtok {what} directory"), "format_version": Version(version),
            "vqtok_version": Str()}


def new_header(fmt: str, version: int) -> dict[str, Any]:
    """The values of :func:`header_spec` for a file written now."""
    return {"format": fmt, "format_version": version, "vqtok_version": vqtok_version()}


def read_model_config(root: Path, spec: Spec, what: str, error: type[Exception]
                      ) -> tuple[Path, dict[str, Any]]:
    """``(config path, validated config)`` of the model directory ``root``; a missing
    directory, invalid JSON or a config that does not follow ``spec`` raise ``error``."""
    if any(ord(c) < 32 for c in str(root)):  # a NUL byte cannot reach the file system
        raise error(f"{str(root)!r}: not a usable path (it holds a control character)")
    try:
        found = root.is_dir()
    except (OSError, ValueError) as err:  # a path too long, say
        raise error(f"{str(root)!r}: not a usable path ({err})") from err
    if not found:
        raise error(f"{root}: not a {what} directory (it does not exist or is not a directory)")
    path = root / CONFIG_NAME
    config = read_json(path, error)
    validate(config, spec, str(path), error)
    return path, config


def build_module(spec: dict[str, Any], what: str, path: Path, error: type[Exception]) -> Any:
    """Build a validated module spec through the registry; failures raise ``error``."""
    try:
        return registry.build(spec)
    except (ValueError, TypeError) as err:
        raise error(f"{path}: cannot build the {what}: {err}") from err


def save_model_dir(target: Path, config: dict[str, Any], model: nn.Module, fmt: str,
                   what: str) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (marked as format ``fmt``) to
    ``target`` atomically: a crash leaves the old directory or the new one.

    An existing ``target`` is replaced only if it holds nothing but those two files;
    otherwise a ``ValueError`` says so (``what`` names the kind, e.g. "tokenizer").
    """
    target = Path(target)
    if target.exists() or target.is_symlink():
        _check_replaceable(target, what)
    with atomic_directory(target) as tmp:
        # save_model drops aliases of shared tensors (a tied embedding, say), recording
        # them in the metadata, and makes every tensor contiguous; load_model restores them.
        save_model(model, str(tmp / WEIGHTS_NAME),
                   metadata={WEIGHTS_MARKER: fmt, "format": "pt"}, force_contiguous=True)
        config = {**config, WEIGHTS_SHA256: file_sha256(tmp / WEIGHTS_NAME)}
        with open(tmp / CONFIG_NAME, "w", encoding="utf-8") as f:
            f.write(to_json(config, "config") + "\n")
    return target


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, in hex (about 1 ms per MB here)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_replaceable(target: Path, what: str) -> None:
    if target.is_symlink() or not target.is_dir():
        raise ValueError(f"{target} exists and is not a directory; refusing to replace it")
    foreign = sorted(p.name for p in target.iterdir() if p.name not in (CONFIG_NAME, WEIGHTS_NAME))
    if foreign:
        raise ValueError(
            f"{target} exists and holds files that are not part of a {what} {foreign}; "
            f"refusing to replace it (choose an empty or new directory)"
        )


def load_weights(model: nn.Module, path: Path, fmt: str, error: type[Exception],
                 what: str, sha256: str | None = None) -> None:
    """Load ``model.safetensors`` into ``model`` strictly, after checking its SHA-256
    against ``sha256`` (the config's ``weights_sha256``, when it has one) and that it is
    marked as format ``fmt``; every problem raises ``error`` naming the file."""
    if not path.is_file():
        raise error(f"{path}: missing {WEIGHTS_NAME}")
    if sha256 is not None and file_sha256(path) != sha256:
        raise error(f"{path}: the file's SHA-256 is not the {WEIGHTS_SHA256} recorded in "
                    f"{CONFIG_NAME}: it is corrupt or was changed")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            marker = (f.metadata() or {}).get(WEIGHTS_MARKER)
    except (SafetensorError, OSError, ValueError) as err:
        raise error(f"{path}: not a readable safetensors file ({err})") from err
    if marker != fmt:
        raise error(f"{path}: a safetensors file not written by vqtok as a {what} (metadata "
                    f"{WEIGHTS_MARKER!r} is {marker!r}, expected {fmt!r})")
    try:
        load_model(model, str(path), strict=True, device="cpu")
    except (SafetensorError, OSError) as err:
        raise error(f"{path}: corrupt or truncated weights ({err})") from err
    except RuntimeError as err:  # missing / unexpected / mis-shaped tensors
        raise error(f"{path}: weights do not match the {what}: {err}") from err
