"""Conv encoder/decoder and the ``VQAutoencoder`` that joins them to a quantizer."""

from vqtok.models.autoencoder import AutoencoderOutput, VQAutoencoder
from vqtok.models.convnet import Decoder, Encoder

__all__ = ["AutoencoderOutput", "Decoder", "Encoder", "VQAutoencoder"]
