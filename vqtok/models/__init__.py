"""Conv encoder/decoder, their causal video forms, and the ``VQAutoencoder`` that joins
either pair to a quantizer; the patch discriminator of adversarial training."""

from vqtok.models.autoencoder import AutoencoderOutput, VQAutoencoder
from vqtok.models.convnet import Decoder, Encoder
from vqtok.models.discriminator import PatchDiscriminator
from vqtok.models.video import VideoDecoder, VideoEncoder

__all__ = ["AutoencoderOutput", "Decoder", "Encoder", "PatchDiscriminator", "VQAutoencoder",
           "VideoDecoder", "VideoEncoder"]
