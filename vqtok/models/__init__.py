"""Conv encoder/decoder and the ``VQAutoencoder`` that joins them to a quantizer; the patch
discriminator of adversarial training."""

from vqtok.models.autoencoder import AutoencoderOutput, VQAutoencoder
from vqtok.models.convnet import Decoder, Encoder
from vqtok.models.discriminator import PatchDiscriminator

__all__ = ["AutoencoderOutput", "Decoder", "Encoder", "PatchDiscriminator", "VQAutoencoder"]
