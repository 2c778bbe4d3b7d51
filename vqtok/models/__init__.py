"""Conv encoder/decoder, their causal video forms, the published VQGAN encoder and decoder
(``vqgan.py``) and MAGVIT-v2's (``magvit2.py``), for converted weights (docs/interop.md),
the ``VQAutoencoder`` that joins a pair to a quantizer; the patch discriminator of
adversarial training."""

from vqtok.models.autoencoder import AutoencoderOutput, VQAutoencoder
from vqtok.models.convnet import Decoder, Encoder
from vqtok.models.discriminator import PatchDiscriminator
from vqtok.models.magvit2 import MagvitDecoder, MagvitEncoder
from vqtok.models.video import VideoDecoder, VideoEncoder
from vqtok.models.vqgan import VQGANDecoder, VQGANEncoder

__all__ = ["AutoencoderOutput", "Decoder", "Encoder", "MagvitDecoder", "MagvitEncoder",
           "PatchDiscriminator", "VQAutoencoder", "VQGANDecoder", "VQGANEncoder", "VideoDecoder",
           "VideoEncoder"]
