"""Deprecated: :mod:`vqtok.tokenizers.tiling` (this module goes in the next release)."""

import warnings

from vqtok.tokenizers.tiling import *
from vqtok.tokenizers.tiling import __all__  # noqa: F401

warnings.warn("vqtok.tiling moved to vqtok.tokenizers.tiling; import it from there",
              DeprecationWarning, stacklevel=2)
