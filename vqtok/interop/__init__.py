"""Other projects' tokenizers as vqtok tokenizers (docs/interop.md): taming-transformers'
VQGAN log folders, diffusers' ``VQModel`` folders, LlamaGen's tokenizer files and
SEED-Voken's Open-MAGVIT2 and IBQ checkpoints, read without running anything they hold,
into the models of :mod:`vqtok.models.vqgan` and :mod:`vqtok.models.magvit2`, and written
as ordinary tokenizer directories (:func:`convert`)."""

from vqtok.interop.common import ConversionError, Converted
from vqtok.interop.convert import SOURCES, convert, load_source

__all__ = ["SOURCES", "ConversionError", "Converted", "convert", "load_source"]
