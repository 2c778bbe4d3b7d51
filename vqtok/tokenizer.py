"""Deprecated: :mod:`vqtok.tokenizers.image` (this module goes in the next release)."""

import warnings

from vqtok.tokenizers.image import *
from vqtok.tokenizers.image import __all__  # noqa: F401

warnings.warn("vqtok.tokenizer moved to vqtok.tokenizers.image; import it from there",
              DeprecationWarning, stacklevel=2)
