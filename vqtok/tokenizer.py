"""Deprecated: :mod:`vqtok.tokenizers.image` (this module goes in the next release)."""

import warnings

from vqtok.tokenizers.batching import BATCH_PIXELS
from vqtok.tokenizers.image import ImageTokenizer

__all__ = ["BATCH_PIXELS", "ImageTokenizer"]

warnings.warn("vqtok.tokenizer moved to vqtok.tokenizers.image; import it from there",
              DeprecationWarning, stacklevel=2)
