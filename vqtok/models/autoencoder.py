"""``VQAutoencoder(encoder, quantizer, decoder)``: pixels -> tokens -> pixels.

A plain ``nn.Module`` that composes the three parts it is given (docs/architecture.md);
training logic lives in ``vqtok.training``. It is not registered itself: its config is
the three registered specs of its parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vqtok.quantizers.base import Quantizer, QuantizerOutput


@dataclass
class AutoencoderOutput:
    """What :meth:`VQAutoencoder.forward` returns."""

    x_hat: Tensor
    """``(B, C, H, W)`` reconstruction, same shape as the input."""
    quant: QuantizerOutput
    """The quantizer's output for the encoded input (``z_q``, ``indices``, ``losses``)."""


class VQAutoencoder(nn.Module):
    """Encoder, quantizer and decoder behind one interface.

    ``encoder`` must expose ``in_channels``, ``dim`` and ``downsample_factor``;
    ``decoder`` must expose ``out_channels``, ``dim`` and ``downsample_factor`` (as
    :class:`~vqtok.models.Encoder` and :class:`~vqtok.models.Decoder` do).
    """

    def __init__(self, encoder: nn.Module, quantizer: Quantizer, decoder: nn.Module) -> None:
        super().__init__()
        if not isinstance(quantizer, Quantizer):
            raise TypeError(
                f"quantizer must be a vqtok Quantizer, got {type(quantizer).__name__}"
            )
        for part, attrs in ((encoder, ("in_channels", "dim", "downsample_factor")),
                            (decoder, ("out_channels", "dim", "downsample_factor"))):
            missing = [a for a in attrs if not hasattr(part, a)]
            if missing:
                raise TypeError(f"{type(part).__name__} lacks the attributes {missing}")
        dims = (encoder.dim, quantizer.dim, decoder.dim)
        if len(set(dims)) != 1:
            raise ValueError(
                f"encoder, quantizer and decoder dims must be equal, got encoder.dim="
                f"{dims[0]}, quantizer.dim={dims[1]}, decoder.dim={dims[2]}"
            )
        if encoder.downsample_factor != decoder.downsample_factor:
            raise ValueError(
                f"encoder downsamples by {encoder.downsample_factor} but the decoder "
                f"upsamples by {decoder.downsample_factor}; use the same channel_mult length"
            )
        if encoder.in_channels != decoder.out_channels:
            raise ValueError(
                f"encoder.in_channels={encoder.in_channels} differs from "
                f"decoder.out_channels={decoder.out_channels}"
            )
        self.encoder = encoder
        self.quantizer = quantizer
        self.decoder = decoder

    # Shape facts, read from the parts (an ``H x W`` image gives ``H/f x W/f`` tokens).
    downsample_factor = property(lambda self: int(self.encoder.downsample_factor),
                                 doc="Pixels per token along each side.")
    in_channels = property(lambda self: int(self.encoder.in_channels),
                           doc="Image channels the model reads and writes.")
    dim = property(lambda self: int(self.quantizer.dim),
                   doc="Width of the latent feature map (the quantizer's dim).")
    codebook_size = property(lambda self: int(self.quantizer.codebook_size),
                             doc="Number of distinct token ids.")

    def encode(self, x: Tensor) -> QuantizerOutput:
        """Image ``(B, C, H, W)`` with H, W multiples of :attr:`downsample_factor`
        -> :class:`QuantizerOutput` whose ``indices`` are ``(B, H/f, W/f)``."""
        return self.quantizer(self.encoder(x))

    def decode(self, z_q: Tensor) -> Tensor:
        """Quantized features ``(B, dim, h, w)`` -> image ``(B, C, h*f, w*f)``."""
        return self.decoder(z_q)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Token ids ``(B, h, w)`` -> image ``(B, C, h*f, w*f)``; in eval mode equal to
        ``decode(encode(x).z_q)`` for ``indices = encode(x).indices``."""
        codes = self.quantizer.indices_to_codes(indices)  # (B, D, h, w) float32
        param = next(self.decoder.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        return self.decode(codes.to(dtype))

    def forward(self, x: Tensor) -> AutoencoderOutput:
        quant = self.encode(x)
        return AutoencoderOutput(x_hat=self.decode(quant.z_q), quant=quant)
