"""Quantizers behind one contract (docs/algorithms.md#quantizer-contract): VQ-VAE, SimVQ,
FSQ."""

from vqtok.quantizers.base import Quantizer, QuantizerOutput
from vqtok.quantizers.fsq import FSQ
from vqtok.quantizers.simvq import SimVQ
from vqtok.quantizers.vq import VectorQuantizer

__all__ = ["FSQ", "Quantizer", "QuantizerOutput", "SimVQ", "VectorQuantizer"]
