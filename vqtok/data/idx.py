"""A plain reader for the IDX format of (Fashion-)MNIST, gzipped or not.

Layout (LeCun et al., the MNIST database page): two zero bytes, one dtype byte, one byte
``ndim``, then ``ndim`` big-endian uint32 sizes, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

# IDX dtype byte -> numpy dtype (multi-byte types are big-endian).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | os.PathLike, source: str | None = None) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number; ``source``
    names the file in errors (default: ``path``)."""
    path = Path(path)
    raw = path.read_bytes()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{source or path}: corrupt or truncated gzip data ({err})") from err


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array in native byte order; ``source`` names it in errors."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{source}: not an IDX file (expected two zero bytes, a dtype byte and ndim; "
            f"got {data[:4]!r})"
        )
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{source}: unknown IDX dtype byte 0x{dtype_code:02X}, expected one of "
                         f"{known}")
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise ValueError(f"{source}: truncated IDX header ({len(data)} bytes for {ndim} sizes)")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[dtype_code]
    expected = math.prod(shape) * dtype.itemsize
    actual = len(data) - header_end
    if actual != expected:
        state = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(
            f"{source}: IDX data {state}: header says shape {shape} ({expected} bytes of "
            f"{dtype}), file holds {actual} bytes after the header"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header_end).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike, source: str | None = None) -> np.ndarray:
    """Read an IDX file (``*-idx3-ubyte``, ``*-idx1-ubyte``, optionally ``.gz``).

    Raises ValueError naming ``source`` (default: the path) when the file is corrupt or
    truncated: a copy being checked is named after the user's file it came from.
    """
    return parse_idx(read_bytes(path, source), source=source or str(path))
