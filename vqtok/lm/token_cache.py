"""The language model's token cache (docs/formats.md#token-cache): the ids of a whole image
dataset under one tokenizer, filled in as images are encoded.

One ``.npz`` per dataset split and tokenizer (the file name holds the tokenizer's
fingerprint)::

    ids   (N, h, w)     uint16 (codebooks up to 65,536 codes) or int32; (N, t, h, w)
                        for the grids of a video tokenizer
    done  (N,)          bool, which rows hold ids

A cache is disposable: one that is unreadable or of another shape is ignored with a
warning and rebuilt, never trusted. :func:`cached_grids` fills one as it encodes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vqtok.formats.npzfile import read_npz, write_npz
from vqtok.formats.schema import Array, FormatError, Obj, validate
from vqtok.tokenizers import ImageTokenizer

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


def cached_grids(encode: Callable[[np.ndarray], Tensor], n: int, grid_shape: tuple[int, ...],
                 codebook_size: int, indices: list[int], cache_file: Path | None,
                 chunk: int = 4096, what: str = "images") -> Tensor:
    """Token grids ``(len(indices), *grid_shape)`` of items ``indices`` of a dataset of
    ``n``, reusing and extending the cache ``cache_file`` (module doc): only the
    missing requested items are encoded, ``chunk`` at a time, by ``encode(item indices)``,
    and the cache is written after each chunk (an interrupted run keeps what it did)."""
    dtype = np.dtype(np.uint16 if codebook_size <= 1 << 16 else np.int32)
    shape = (n, *grid_shape)
    cached = read_token_cache(cache_file, shape, dtype) if cache_file is not None else None
    ids, done = cached or (np.zeros(shape, dtype=dtype), np.zeros(n, dtype=bool))
    wanted = np.asarray(indices, dtype=np.int64)
    missing = wanted[~done[wanted]]
    if missing.size:
        start = time.perf_counter()
        for part in np.array_split(missing, math.ceil(missing.size / chunk)):
            ids[part] = encode(part).numpy()
            done[part] = True
            if cache_file is not None:
                write_token_cache(cache_file, ids, done)
        log.info("tokenized %d %s in %.1f s", missing.size, what, time.perf_counter() - start)
    return torch.from_numpy(ids[wanted].astype(np.int64))


def encode_cached(tokenizer: ImageTokenizer, dataset: Dataset, indices: list[int],
                  cache_file: Path | None, batch_size: int = 256) -> Tensor:
    """Token ids ``(len(indices), h, w)`` of the images ``dataset[i][0]`` (float ``(C, H, W)``
    in the tokenizer's input space, one size for all), through :func:`cached_grids`."""

    def encode(part: np.ndarray) -> Tensor:
        x = torch.stack([dataset[int(i)][0] for i in part])  # (m, C, H, W)
        if x.shape[1] == 1 and tokenizer.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return tokenizer.encode(x, batch_size=batch_size)

    grid = tokenizer.tokens_shape(*dataset[0][0].shape[-2:])
    return cached_grids(encode, len(dataset), grid, tokenizer.codebook_size,  # type: ignore[arg-type]
                        indices, cache_file)
