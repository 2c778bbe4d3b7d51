"""What every vqtok model directory shares: a ``config.json`` beside a ``model.safetensors``.

The tokenizer format (:mod:`vqtok.io`) and the decoder format
(:mod:`vqtok.multimodal.export`) each own their keys, their validation and their error
type; the mechanics are here, once: strict JSON (no duplicate keys, no NaN or Infinity),
an atomic save that refuses to delete files it did not write, and a weight load that
checks the file was written by vqtok for this format and matches the model exactly.
Nothing here unpickles or imports code named by a file.
"""

from __future__ import annotations

import json
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from vqtok.atomic import atomic_directory

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_MARKER = "vqtok.format"  # safetensors metadata key naming the directory's format


def vqtok_version() -> str:
    """The installed vqtok version, or ``"unknown"`` when run from an uninstalled tree."""
    try:
        return importlib_metadata.version("vqtok")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool`` (JSON ``true`` is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_keys(obj: dict, required: set | frozenset, optional: set | frozenset, where: str,
               fail: Any) -> None:
    """Raise ``fail(message)`` unless ``obj`` has every required key and no unknown one."""
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise fail(f"unknown keys {unknown} in {where}; expected {sorted(required | optional)}")
    missing = sorted(set(required) - set(obj))
    if missing:
        raise fail(f"missing keys {missing} in {where}")


def new_header(fmt: str, version: int) -> dict[str, Any]:
    """The keys every ``config.json`` starts with (what :func:`check_header` checks)."""
    return {"format": fmt, "format_version": version, "vqtok_version": vqtok_version()}


def check_header(config: Any, fmt: str, version: int, required: frozenset,
                 optional: frozenset, what: str, fail: Any) -> None:
    """The checks every ``config.json`` starts with: a JSON object of format ``fmt`` and
    version ``version`` with exactly the known top-level keys; else ``fail(message)``."""
    if not isinstance(config, dict):
        raise fail(f"expected a JSON object, got {type(config).__name__}")
    if config.get("format") != fmt:
        raise fail(f"'format' must be {fmt!r} (a vqtok {what} directory), got "
                   f"{config.get('format')!r}")
    found = config.get("format_version")
    if not is_int(found) or found != version:
        hint = " (written by a newer vqtok? upgrade vqtok)" if is_int(found) else ""
        raise fail(f"unsupported format_version {found!r}; this vqtok reads {version}{hint}")
    check_keys(config, required, optional, "config", fail)
    if not isinstance(config["vqtok_version"], str):
        raise fail(f"'vqtok_version' must be a string, got {config['vqtok_version']!r}")


def to_json(obj: Any, what: str) -> str:
    """``obj`` as indented JSON; a ``ValueError`` naming ``what`` if it holds something
    JSON cannot (a tensor, a NaN)."""
    try:
        return json.dumps(obj, indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be JSON-serialisable (finite numbers), got {err}") from err


def json_copy(obj: Any, what: str) -> Any:
    """``obj`` as it will read back from JSON (tuples become lists); a ``ValueError``
    naming ``what`` if JSON cannot hold it."""
    return json.loads(to_json(obj, what))


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ValueError(f"duplicate keys {duplicated}")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not valid JSON")


def read_json(path: Path, error: type[Exception]) -> Any:
    """Parse the JSON file ``path`` strictly; problems raise ``error`` naming the file."""
    if not path.is_file():
        raise error(f"{path}: missing {path.name}")
    try:
        return json.loads(path.read_text(encoding="utf-8"),
                          object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise error(f"{path}: not valid JSON ({err})") from err


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
        with open(tmp / CONFIG_NAME, "w", encoding="utf-8") as f:
            f.write(to_json(config, "config") + "\n")
        # save_model drops aliases of shared tensors (a tied embedding, say), recording
        # them in the metadata, and makes every tensor contiguous; load_model restores them.
        save_model(model, str(tmp / WEIGHTS_NAME),
                   metadata={WEIGHTS_MARKER: fmt, "format": "pt"}, force_contiguous=True)
    return target


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
                 what: str) -> None:
    """Load ``model.safetensors`` into ``model`` strictly, after checking it is marked as
    format ``fmt``; every problem raises ``error`` naming the file."""
    if not path.is_file():
        raise error(f"{path}: missing {WEIGHTS_NAME}")
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


__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_MARKER",
    "WEIGHTS_NAME",
    "check_header",
    "check_keys",
    "is_int",
    "json_copy",
    "load_weights",
    "new_header",
    "read_json",
    "save_model_dir",
    "to_json",
    "vqtok_version",
]
