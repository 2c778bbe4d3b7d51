"""``.npz`` archives of plain arrays, read and written one way by every vqtok format.

Reading never unpickles (``allow_pickle=False``): an object array is an error, not code
run. Nothing is decompressed before the whole archive has been judged from what it
declares: its member list (zip central directory) and each member's ``.npy`` header
(shape and dtype, the first bytes of the member). Every member must be a ``.npy`` array
of a known name, its declared sizes must agree, and their total must fit a budget
(:data:`MAX_NPZ_BYTES`): a few megabytes of zeros can declare gigabytes. Members are then
read no further than they declare. Writing is compressed and atomic
(:mod:`vqtok.formats.atomic`).
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Collection
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from vqtok.formats.atomic import atomic_write_bytes
from vqtok.formats.schema import FormatError

MAX_NPZ_BYTES = 1 << 31
"""The most bytes the arrays of one ``.npz`` may declare (2 GiB: 268 million int64 ids),
checked before any is decompressed."""


def write_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray],
              compress: bool = True) -> Path:
    """Write ``arrays`` to ``path`` atomically."""
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def _declared(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[int, int]:
    """``(bytes of the array, bytes of the header)`` a member's ``.npy`` header declares;
    a ValueError for a member that is not a plain array."""
    with archive.open(info) as stream:
        try:
            version = npy.read_magic(stream)
        except ValueError:
            raise ValueError("is not a .npy array") from None
        if version not in ((1, 0), (2, 0)):  # 3.0 only for non-latin-1 field names
            raise ValueError(f"is .npy format version {version}, not 1.0 or 2.0")
        header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = header(stream)
        start = stream.tell()
    if dtype.hasobject:
        raise ValueError("holds Python objects (vqtok never unpickles)")
    if any(n < 0 for n in shape):
        raise ValueError(f"has a negative size in its shape {shape}")
    return math.prod(shape) * dtype.itemsize, start


def read_npz(path: str | os.PathLike[str], what: str, error: type[Exception] = FormatError,
             keys: Collection[str] | None = None, max_bytes: int = MAX_NPZ_BYTES,
             only: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path`` (with ``only``: those of these names that it
    holds; the others are neither decompressed nor counted against the budget). A missing
    or unreadable file, a member not named in ``keys`` (when given), or arrays declaring
    more than ``max_bytes`` in all raise ``error`` naming the file (``what``: the kind of
    file, for the message), before anything is decompressed (module doc)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    if not zipfile.is_zipfile(path):  # else numpy reads it as a pickle and says so
        raise error(f"{path}: not a readable {what} (not an .npz archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename.removesuffix(".npy") for info in infos]
            unknown = sorted(set(names) - set(keys)) if keys is not None else []
            if unknown:
                raise error(f"{path}: unknown keys {unknown[:8]} in the {what}; expected "
                            f"{sorted(keys)}")
            if len(set(names)) != len(names):
                raise error(f"{path}: a key stored twice in the {what}")
            if only is not None:
                chosen = [(n, i) for n, i in zip(names, infos) if n in set(only)]
                names, infos = [n for n, _ in chosen], [i for _, i in chosen]
            total = 0
            for info in infos:
                member = f"{path}: not a readable {what}: member {info.filename!r}"
                try:
                    size, start = _declared(archive, info)
                except ValueError as err:
                    raise error(f"{member} {err}") from None
                total += size
                if total > max_bytes:
                    raise error(f"{path}: the {what} declares {total:,} bytes of arrays, over "
                                f"the budget of {max_bytes:,}")
                if start + size != info.file_size:
                    raise error(f"{member} declares {size:,} bytes of data in its header but "
                                f"{info.file_size - start:,} in the archive")
            arrays = {}
            for name, info in zip(names, infos):
                with archive.open(info) as stream:  # reads at most info.file_size bytes
                    arrays[name] = npy.read_array(stream, allow_pickle=False)
            return arrays
    except error:
        raise
    except Exception as err:  # damaged archives fail in many ways: zlib, a CRC, an
        # "encrypted" flag, an unknown compression method, a header numpy cannot parse
        raise error(f"{path}: not a readable {what} ({type(err).__name__}: {err})") from err
