"""Tokenizers for inference: images or clips in, int64 token ids out, and back.

==================================  =====================================================
:class:`ImageTokenizer`              images (any size, padded) -> ids ``(B, h, w)``
:class:`VideoTokenizer`              clips -> ids ``(t, h, w)``, through a causal model
:func:`load_tokenizer`               a tokenizer directory or Hub repo id -> the right one
:mod:`.base`                         what both share: loading and saving, device, kernels
:mod:`.batching`                     the batch planner: padded sizes, fixed batches, buckets
:mod:`.pixels`                       pixel normalisation, batch splitting, padding
:mod:`.tiling`                       large images on overlapping tiles
:mod:`.runtime`                      devices, batch-independent kernels, ``torch.compile``
==================================  =====================================================

Nothing here imports Lightning.
"""

from vqtok.tokenizers.base import Tokenizer
from vqtok.tokenizers.batching import BatchPlanner
from vqtok.tokenizers.image import ImageTokenizer
from vqtok.tokenizers.load import load_tokenizer
from vqtok.tokenizers.pixels import DEFAULT_NORMALIZATION, Normalization
from vqtok.tokenizers.video import VideoTokenizer

__all__ = ["DEFAULT_NORMALIZATION", "BatchPlanner", "ImageTokenizer", "Normalization",
           "Tokenizer", "VideoTokenizer", "load_tokenizer"]
