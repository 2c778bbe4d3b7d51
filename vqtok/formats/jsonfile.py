"""Strict JSON, read and written one way by every vqtok format.

Reading rejects what Python's ``json`` accepts but JSON does not mean: duplicate keys
(the last would silently win) and ``NaN`` / ``Infinity``; and what no vqtok file needs but
a hostile one could use: text over :data:`MAX_JSON_BYTES` (read no further than that) and
nesting deeper than :data:`MAX_JSON_DEPTH`, which would otherwise end in a RecursionError
here or in whatever walks the document later. Writing refuses values JSON cannot hold and
goes through :mod:`vqtok.formats.atomic`, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vqtok.formats.atomic import atomic_write_bytes
from vqtok.formats.schema import FormatError

MAX_JSON_BYTES = 64 << 20
"""The largest JSON file vqtok reads (64 MiB; a config is a few KB, a long run's codebook
history a few MB)."""
MAX_JSON_DEPTH = 64
"""The deepest nesting of objects and lists vqtok reads (its own files nest 5 deep)."""


def to_json(obj: Any, what: str, indent: int = 2) -> str:
    """``obj`` as JSON text; a ``ValueError`` naming ``what`` if it holds something JSON
    cannot (a tensor, a NaN)."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as err:
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


def _depth(doc: Any) -> int:
    """How deeply objects and lists nest in ``doc`` (a scalar: 0), without recursion."""
    deepest, todo = 0, [(doc, 1)]
    while todo:
        node, depth = todo.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(
            node, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            todo += [(child, depth + 1) for child in children]
    return deepest


def read_json(path: str | os.PathLike[str], error: type[Exception] = FormatError) -> Any:
    """Parse the JSON file ``path`` strictly; problems raise ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing {path.name}")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise error(f"{path}: over {MAX_JSON_BYTES:,} bytes, more than any vqtok JSON file "
                        f"holds")
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_reject_duplicates,
                         parse_constant=_reject_constant)
    except error:
        raise
    except RecursionError:  # the parser recurses once per level
        raise error(f"{path}: not valid JSON for vqtok (nested deeper than "
                    f"{MAX_JSON_DEPTH} levels)") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise error(f"{path}: not valid JSON ({err})") from err
    if _depth(doc) > MAX_JSON_DEPTH:
        raise error(f"{path}: not valid JSON for vqtok (nested deeper than {MAX_JSON_DEPTH} "
                    f"levels)")
    return doc
