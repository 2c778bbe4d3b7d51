"""What every vqtok model directory shares: a ``config.json`` beside a ``model.safetensors``.

The tokenizer format (:mod:`vqtok.formats.tokenizer_dir`) and the language model's format
(:mod:`vqtok.lm.lm_dir`) each own their keys and their error type; the
mechanics are here, once: the header every ``config.json`` starts with, the module spec
``{"class_path", "init_args"}`` rebuilt through the registry, an atomic save that refuses
to delete files it did not write, and a weight load that checks the file was written by
vqtok for this format and matches the model exactly. Nothing here unpickles or imports
code named by a file.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn
from torch.overrides import TorchFunctionMode

from vqtok import registry
from vqtok.formats.atomic import atomic_directory
from vqtok.formats.jsonfile import read_json, to_json
from vqtok.formats.schema import Anything, Const, Obj, Spec, Str, Version, validate

# Importing the building blocks registers them, so a config can name any of them (the
# language model's format imports the language model itself).
from vqtok.models import VQAutoencoder  # noqa: F401
from vqtok.quantizers import Quantizer  # noqa: F401
from vqtok.version import vqtok_version

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_MARKER = "vqtok.format"  # safetensors metadata key naming the directory's format

MODULE_SPEC = Obj({"class_path": Str(nonempty=True), "init_args": Anything()})
"""A module as ``{"class_path": registered name, "init_args": {...}}``; the registry checks
the init args when it builds the module."""

MAX_MODEL_BYTES = 1 << 32
"""The most bytes of parameters and buffers a model directory may describe (4 GiB: a
billion float32 values), judged from ``config.json`` before anything is allocated."""

M = TypeVar("M", bound=nn.Module)

WEIGHTS_SHA256 = "weights_sha256"
OPTIONAL_SPEC: dict[str, Spec] = {
    "extra": Anything(),
    WEIGHTS_SHA256: Str(pattern="[0-9a-f]{64}", what="a SHA-256 in hex (64 digits)"),
}
"""Keys every ``config.json`` may hold: free metadata, and the SHA-256 of the weights file
(written by every save, verified at load; directories written before it existed load
without the check)."""


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


def build_and_load(build: Callable[[], M], root: Path, fmt: str, error: type[Exception],
                   what: str, sha256: str | None = None) -> M:
    """``build()`` (the model a validated config describes, raising ``error`` when it
    cannot) with the weights of ``root/model.safetensors`` loaded, allocating nothing until
    the config and the file agree (module doc): built on the ``meta`` device, the model must
    fit :data:`MAX_MODEL_BYTES` and hold exactly the tensors, by name and shape, that the
    file declares; each refusal is one ``error`` line naming the file."""
    config_path, path = root / CONFIG_NAME, root / WEIGHTS_NAME
    try:
        with torch.device("meta"), _MetaNormal():
            skeleton = build()
    except (RuntimeError, NotImplementedError) as err:  # an operation without a meta kernel
        raise error(f"{config_path}: cannot build the {what} without allocating it "
                    f"({' '.join(str(err).split())})") from err
    size = sum(t.numel() * t.element_size()
               for t in itertools.chain(skeleton.parameters(), skeleton.buffers()))
    if size > MAX_MODEL_BYTES:
        raise error(f"{config_path}: describes a {what} of {size:,} bytes of parameters and "
                    f"buffers, over the {MAX_MODEL_BYTES:,} a {what} directory may hold")
    _check_declared(skeleton, _declared_tensors(path, fmt, error, what, sha256), path, error,
                    what)
    model = build()
    try:
        load_model(model, str(path), strict=True, device="cpu")
    except (SafetensorError, OSError) as err:
        raise error(f"{path}: corrupt or truncated weights ({err})") from err
    except RuntimeError as err:  # dtypes that do not convert, say; shapes were checked
        raise error(f"{path}: weights do not match the {what}: "
                    f"{' '.join(str(err).split())}") from err
    return model


class _MetaNormal(TorchFunctionMode):
    """``normal_`` on a meta tensor returns it unchanged: a meta tensor holds no values,
    and PyTorch's meta kernel of ``normal_`` would first import ``torch._dynamo`` (seconds
    of start-up for a model initialised with it). Everything else runs as it would."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensor = args[0] if args else kwargs.get("tensor")  # nn.init passes it by name
        if func in (torch.Tensor.normal_, nn.init.normal_) and isinstance(
                tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return func(*args, **kwargs)


def _declared_tensors(path: Path, fmt: str, error: type[Exception], what: str,
                      sha256: str | None) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` from the header of a weights file checked to be marked
    as ``fmt`` and to have the SHA-256 ``sha256`` (when given); no tensor is read."""
    if not path.is_file():
        raise error(f"{path}: missing {WEIGHTS_NAME}")
    if sha256 is not None and file_sha256(path) != sha256:
        raise error(f"{path}: the file's SHA-256 is not the {WEIGHTS_SHA256} recorded in "
                    f"{CONFIG_NAME}: it is corrupt or was changed")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            names = f.keys()
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError, ValueError) as err:
        raise error(f"{path}: not a readable safetensors file ({err})") from err
    marker = metadata.get(WEIGHTS_MARKER)
    if marker != fmt:
        raise error(f"{path}: a safetensors file not written by vqtok as a {what} (metadata "
                    f"{WEIGHTS_MARKER!r} is {marker!r}, expected {fmt!r})")
    return shapes


def _check_declared(skeleton: nn.Module, shapes: dict[str, tuple[int, ...]], path: Path,
                    error: type[Exception], what: str) -> None:
    """An ``error`` unless the file declares exactly the skeleton's state, every tensor by
    name and shape, as a strict load checks it. A tensor the model shares under several
    names (a tied embedding) may be stored under one of them
    (:func:`safetensors.torch.save_model` stores it once)."""
    names_of: dict[int, list[str]] = {}
    for name, tensor in itertools.chain(skeleton.named_parameters(remove_duplicate=False),
                                        skeleton.named_buffers(remove_duplicate=False)):
        names_of.setdefault(id(tensor), []).append(name)
    shared = {name: names for names in names_of.values() for name in names}
    problem = f"{path}: weights do not match the {what} that {CONFIG_NAME} describes"
    wanted = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    for name, shape in wanted.items():
        stored = next((shapes[n] for n in shared.get(name, [name]) if n in shapes), None)
        if stored is None:
            raise error(f"{problem}: the file has no tensor {name} {list(shape)}")
        if stored != shape:
            raise error(f"{problem}: {name} is {list(stored)} in the file but {list(shape)} "
                        f"in the {what} (size mismatch)")
    unexpected = sorted(set(shapes) - set(wanted))
    if unexpected:
        raise error(f"{problem}: the file holds {len(unexpected)} tensors the {what} has not, "
                    f"such as {unexpected[0]}")
