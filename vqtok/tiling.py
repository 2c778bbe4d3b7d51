"""Deprecated: :mod:`vqtok.tokenizers.tiling` (this module goes in the next release)."""

import warnings

from vqtok.tokenizers.tiling import (
    DEFAULT_TILE_SIZE,
    Span,
    decode_tiled,
    encode_tiled,
    tile_spans,
    tiles,
    tiling_plan,
)

__all__ = ["DEFAULT_TILE_SIZE", "Span", "decode_tiled", "encode_tiled", "tile_spans", "tiles",
           "tiling_plan"]

warnings.warn("vqtok.tiling moved to vqtok.tokenizers.tiling; import it from there",
              DeprecationWarning, stacklevel=2)
