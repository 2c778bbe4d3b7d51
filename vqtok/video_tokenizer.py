"""Deprecated: :mod:`vqtok.tokenizers.video` (this module goes in the next release)."""

import warnings

from vqtok.tokenizers.video import *
from vqtok.tokenizers.video import __all__  # noqa: F401

warnings.warn("vqtok.video_tokenizer moved to vqtok.tokenizers.video; import it from there",
              DeprecationWarning, stacklevel=2)
