"""The decoder's token cache (docs/formats.md#token-cache): the ids of a whole image
dataset under one tokenizer, filled in as images are encoded.

One ``.npz`` per dataset split and tokenizer (the file name holds the tokenizer's
fingerprint)::

    ids   (N, h, w)     uint16 (codebooks up to 65,536 codes) or int32; (N, t, h, w)
                        for the grids of a video tokenizer
    done  (N,)          bool, which rows hold ids

A cache is disposable: one that is unreadable or of another shape is ignored with a
warning and rebuilt, never trusted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from vqtok.formats.npzfile import read_npz, write_npz
from vqtok.formats.schema import Array, FormatError, Obj, validate

__all__ = ["SPEC", "read_token_cache", "spec", "write_token_cache"]

log = logging.getLogger(__name__)

SPEC = Obj({"ids": Array("iu", (None, None, None), min=0), "done": Array("b", (None,))})
"""An image cache; :func:`spec` gives the one for grids of any rank."""


def spec(grid_rank: int) -> Obj:
    """The cache of ``(h, w)`` (rank 2) or ``(t, h, w)`` (rank 3) grids."""
    return Obj({"ids": Array("iu", (None,) * (grid_rank + 1), min=0),
                "done": Array("b", (None,))})


def read_token_cache(path: Path, shape: tuple[int, ...], dtype: np.dtype
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(ids of ``shape`` (N, h, w) or (N, t, h, w) and dtype, done (N,))`` from ``path``,
    or None when there is no usable cache of that shape (a warning says why)."""
    if not path.is_file():
        return None
    try:
        cache_spec = spec(len(shape) - 1)
        arrays = read_npz(path, "token cache", keys=cache_spec.keys)
        validate(arrays, cache_spec, str(path))
    except FormatError as err:
        log.warning("ignoring token cache: %s", err)
        return None
    ids, done = arrays["ids"], arrays["done"]
    if ids.shape != tuple(shape) or done.shape != shape[:1]:
        log.warning("ignoring token cache %s of shape %s (expected %s)", path, ids.shape,
                    tuple(shape))
        return None
    return ids.astype(dtype), done.copy()


def write_token_cache(path: Path, ids: np.ndarray, done: np.ndarray) -> None:
    """Write the cache atomically (uncompressed: ids compress poorly and load faster so)."""
    write_npz(path, {"ids": ids, "done": done}, compress=False)
