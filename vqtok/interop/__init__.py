"""Other projects' tokenizers as vqtok tokenizers (docs/interop.md): taming-transformers'
VQGAN log folders, diffusers' ``VQModel`` folders and LlamaGen's tokenizer files, read
without running anything they hold, into the models of :mod:`vqtok.models.vqgan`, and
written as ordinary tokenizer directories (:func:`convert`)."""

from vqtok.interop.common import ConversionError, Converted
from vqtok.interop.convert import SOURCES, convert, load_source

__all__ = ["SOURCES", "ConversionError", "Converted", "convert", "load_source"]
