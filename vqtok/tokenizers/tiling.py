"""Tiled inference: a convolutional autoencoder run on overlapping tiles of one image.

An image with a side over the tile size is encoded and decoded tile by tile, so the model's
memory stays that of one tile whatever the image size. Each tile is run with a halo around
it that covers the model's receptive field, computed from its layers
(:func:`vqtok.models.receptive.receptive_radius`), and only the tile's own positions are
kept: ids and pixels equal those of the whole image bit for bit when every position gets
the same arithmetic in any input size (the per-sample kernels of
:mod:`vqtok.tokenizers.runtime`). Models with GroupNorm or self-attention mix all positions and are
never tiled (docs/architecture.md#tiled-inference).

Everything here works in tokens: a tile of ``size`` tokens is ``size * f`` pixels for a
model that downsamples by ``f``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from vqtok.models.autoencoder import VQAutoencoder
from vqtok.models.receptive import NotTileableError, receptive_radius

Span = tuple[int, int, int, int]
"""``(start, stop)`` of a tile's own positions, then ``(start, stop)`` of its crop."""

DEFAULT_TILE_SIZE = 512
"""Images with a side over this many pixels are run on tiles of this side (plus halo).
With it a 4000 x 3000 photo through ``checkpoints/photos_fsq`` peaks at 1.1 GiB of RSS
when encoded and 1.35 GiB when decoded (the process, image buffers included)."""


def tile_spans(n: int, size: int, halo: int) -> list[Span]:
    """Cut ``n`` positions into tiles of ``size`` (the last may be shorter):
    ``(start, stop, crop_start, crop_stop)`` with the crop reaching ``halo`` positions
    past the tile on each side, clipped to ``[0, n)``."""
    return [(start, min(n, start + size), max(0, start - halo), min(n, start + size + halo))
            for start in range(0, n, size)]


def tiling_plan(model: VQAutoencoder, tile_size: int | None | str
                ) -> tuple[tuple[int, int] | None, int | None]:
    """``(halo, tile_size)``: the halo in tokens of the encoder and of the decoder (None
    when the model cannot be tiled) and the tile side in pixels (None: never tile).

    ``tile_size``: ``"auto"`` (:data:`DEFAULT_TILE_SIZE` when the model can be tiled),
    ``None`` (never), or a side in pixels, rounded down to a multiple of the downsampling
    factor; a number for a model that cannot be tiled is a ValueError that says why."""
    f = model.downsample_factor
    try:
        # The encoder's window is in pixels, the decoder's in tokens; one more token covers
        # the rounding of nearest-neighbour upsampling (docs/architecture.md#tiled-inference).
        halo: tuple[int, int] | None = (math.ceil(receptive_radius(model.encoder) / f),
                                        math.ceil(receptive_radius(model.decoder)) + 1)
        reason = ""
    except NotTileableError as err:
        halo, reason = None, str(err)
    if tile_size == "auto":
        return halo, (None if halo is None else max(f, DEFAULT_TILE_SIZE // f * f))
    if tile_size is None:
        return halo, None
    if not isinstance(tile_size, int) or isinstance(tile_size, bool) or tile_size < f:
        raise ValueError(f"tile_size must be an int >= the downsampling factor {f}, None or "
                         f"'auto', got {tile_size!r}")
    if halo is None:
        raise ValueError(f"tile_size={tile_size}: this model cannot run on tiles: {reason}; "
                         f"use no tiling (tile_size None, --tile-size none)")
    return halo, tile_size // f * f


def tiles(h: int, w: int, size: int, halo: int) -> Iterator[tuple[Span, Span]]:
    """Row and column spans of every tile of an ``h x w`` token grid, tiles of ``size``
    tokens, crops reaching ``halo`` tokens further."""
    for rows in tile_spans(h, size, halo):
        for cols in tile_spans(w, size, halo):
            yield rows, cols


def encode_tiled(x: Tensor, f: int, size: int, halo: int,
                 encode: Callable[[Tensor], Tensor]) -> Tensor:
    """One padded image ``(C, H, W)`` -> int64 ids ``(H / f, W / f)`` (or with a trailing
    stage axis) on the CPU, a tile at a time.

    ``encode`` maps a crop ``(1, C, h * f, w * f)`` to its ids ``(1, h, w, ...)``. Each
    tile's crop reaches ``halo`` tokens past it on every side (less at the image's border,
    where the whole image's zero padding begins too)."""
    h, w = x.shape[1] // f, x.shape[2] // f
    ids: Tensor | None = None
    for (r0, r1, cr0, cr1), (c0, c1, cc0, cc1) in tiles(h, w, size, halo):
        part = encode(x[None, :, cr0 * f:cr1 * f, cc0 * f:cc1 * f])[0]
        part = part[r0 - cr0:r1 - cr0, c0 - cc0:c1 - cc0].to("cpu", torch.int64)
        if ids is None:
            ids = torch.empty((h, w, *part.shape[2:]), dtype=torch.int64)
        ids[r0:r1, c0:c1] = part
    return ids  # type: ignore[return-value]


def decode_tiled(grid: Tensor, f: int, size: int, halo: int,
                 decode: Callable[[Tensor], Tensor]) -> Tensor:
    """One token grid ``(h, w)`` (or ``(h, w, s)``) -> image ``(C, h * f, w * f)``, a
    tile at a time with a halo of ``halo`` tokens.

    ``decode`` maps a crop of ids ``(1, h', w', ...)`` to the crop's image
    ``(1, C, h' * f, w' * f)`` in whatever form and dtype the caller wants back."""
    h, w = grid.shape[:2]
    image: Tensor | None = None
    for (r0, r1, cr0, cr1), (c0, c1, cc0, cc1) in tiles(h, w, size, halo):
        part = decode(grid[None, cr0:cr1, cc0:cc1])
        piece = part[0, :, (r0 - cr0) * f:(r1 - cr0) * f, (c0 - cc0) * f:(c1 - cc0) * f]
        if image is None:
            image = torch.empty((piece.shape[0], h * f, w * f), dtype=piece.dtype)
        image[:, r0 * f:r1 * f, c0 * f:c1 * f] = piece
    return image  # type: ignore[return-value]
