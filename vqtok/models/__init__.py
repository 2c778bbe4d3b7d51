"""Conv encoder/decoder, their causal video forms, and the ``VQAutoencoder`` that joins
either pair to a quantizer."""

from vqtok.models.autoencoder import AutoencoderOutput, VQAutoencoder
from vqtok.models.convnet import Decoder, Encoder
from vqtok.models.video import VideoDecoder, VideoEncoder

__all__ = ["AutoencoderOutput", "Decoder", "Encoder", "VQAutoencoder", "VideoDecoder",
           "VideoEncoder"]
