"""vqtok: image tokenizers (VQ-VAE, rotation trick, SimVQ, FSQ) that stay fast with huge
codebooks, report codebook collapse, and run end to end: train, export, tokenize.

The inference API (:mod:`vqtok.tokenizers`) needs no Lightning:
``from vqtok import ImageTokenizer``.
"""

from vqtok.formats.tokenizer_dir import (
    TokenizerFormatError,
    load_tokenizer_dir,
    save_tokenizer_dir,
)
from vqtok.tokenizers import ImageTokenizer, VideoTokenizer, load_tokenizer

__version__ = "0.1.0"
__all__ = ["ImageTokenizer", "TokenizerFormatError", "VideoTokenizer", "load_tokenizer",
           "load_tokenizer_dir", "save_tokenizer_dir"]
