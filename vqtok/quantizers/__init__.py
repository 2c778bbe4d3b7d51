"""Quantizers behind one contract (docs/algorithms.md#quantizer-contract): VQ-VAE, SimVQ,
IBQ, FSQ, LFQ, BSQ, and residual stacks of any of them."""

from vqtok.quantizers.base import Quantizer, QuantizerOutput
from vqtok.quantizers.bsq import BSQ
from vqtok.quantizers.fsq import FSQ
from vqtok.quantizers.ibq import IBQ
from vqtok.quantizers.lfq import LFQ
from vqtok.quantizers.residual import ResidualQuantizer
from vqtok.quantizers.simvq import SimVQ
from vqtok.quantizers.vq import VectorQuantizer

__all__ = [
    "BSQ",
    "FSQ",
    "IBQ",
    "LFQ",
    "Quantizer",
    "QuantizerOutput",
    "ResidualQuantizer",
    "SimVQ",
    "VectorQuantizer",
]
