"""Deprecated: :mod:`vqtok.tokenizers.video` (this module goes in the next release)."""

import warnings

from vqtok.tokenizers.video import DEFAULT_MAX_CLIP_PIXELS, VideoTokenizer

__all__ = ["DEFAULT_MAX_CLIP_PIXELS", "VideoTokenizer"]

warnings.warn("vqtok.video_tokenizer moved to vqtok.tokenizers.video; import it from there",
              DeprecationWarning, stacklevel=2)
