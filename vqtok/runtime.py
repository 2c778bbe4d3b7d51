"""Deprecated: :mod:`vqtok.tokenizers.runtime` (this module goes in the next release)."""

import warnings

from vqtok.tokenizers.runtime import *
from vqtok.tokenizers.runtime import __all__  # noqa: F401

warnings.warn("vqtok.runtime moved to vqtok.tokenizers.runtime; import it from there",
              DeprecationWarning, stacklevel=2)
