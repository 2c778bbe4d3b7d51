"""``.npz`` archives of plain arrays, read and written one way by every vqtok format.

Reading never unpickles (``allow_pickle=False``): an object array is an error, not code
run. Writing is compressed and atomic (:mod:`vqtok.formats.atomic`).
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from vqtok.formats.atomic import atomic_write_bytes
from vqtok.formats.schema import FormatError

__all__ = ["read_npz", "write_npz"]


def write_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray],
              compress: bool = True) -> Path:
    """Write ``arrays`` to ``path`` atomically."""
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def read_npz(path: str | os.PathLike[str], what: str, error: type[Exception] = FormatError
             ) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``; a missing or unreadable file raises
    ``error`` naming it (``what``: the kind of file, for the message)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    if not zipfile.is_zipfile(path):  # else numpy reads it as a pickle and says so
        raise error(f"{path}: not a readable {what} (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except Exception as err:  # damaged archives fail in many ways: zlib, an "encrypted"
        # flag, an unknown compression method, a header asking for a huge array
        raise error(f"{path}: not a readable {what} ({type(err).__name__}: {err})") from err
