"""Strict JSON, read and written one way by every vqtok format.

Reading rejects what Python's ``json`` accepts but JSON does not mean: duplicate keys
(the last would silently win) and ``NaN`` / ``Infinity``. Writing refuses values JSON
cannot hold and goes through :mod:`vqtok.formats.atomic`, so a reader never sees half a
file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vqtok.formats.atomic import atomic_write_bytes
from vqtok.formats.schema import FormatError

__all__ = ["json_copy", "read_json", "to_json", "write_json"]


def to_json(obj: Any, what: str, indent: int = 2) -> str:
    """``obj`` as JSON text; a ``ValueError`` naming ``what`` if it holds something JSON
    cannot (a tensor, a NaN)."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be JSON-serialisable (finite numbers), got {err}") from err


def json_copy(obj: Any, what: str) -> Any:
    """``obj`` as it will read back from JSON (tuples become lists)."""
    return json.loads(to_json(obj, what))


def write_json(path: str | os.PathLike[str], obj: Any, what: str, indent: int = 2) -> Path:
    """Write ``obj`` to ``path`` atomically, with a final newline."""
    return atomic_write_bytes(path, (to_json(obj, what, indent) + "\n").encode("utf-8"))


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ValueError(f"duplicate keys {duplicated}")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not valid JSON")


def read_json(path: str | os.PathLike[str], error: type[Exception] = FormatError) -> Any:
    """Parse the JSON file ``path`` strictly; problems raise ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing {path.name}")
    try:
        return json.loads(path.read_text(encoding="utf-8"),
                          object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise error(f"{path}: not valid JSON ({err})") from err
