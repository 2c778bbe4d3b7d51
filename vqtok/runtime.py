"""Deprecated: :mod:`vqtok.tokenizers.runtime` (this module goes in the next release)."""

import warnings

from vqtok.tokenizers.runtime import (
    MAX_COMPILED_SHAPES,
    CompiledCall,
    compiled_indices,
    cpu_per_sample_kernels,
    inference_kernels,
    resolve_device,
)

__all__ = ["MAX_COMPILED_SHAPES", "CompiledCall", "compiled_indices", "cpu_per_sample_kernels",
           "inference_kernels", "resolve_device"]

warnings.warn("vqtok.runtime moved to vqtok.tokenizers.runtime; import it from there",
              DeprecationWarning, stacklevel=2)
