"""The patch discriminator of adversarial tokenizer training (docs/training.md#adversarial-training).

The N-layer "PatchGAN" design of pix2pix (Isola et al. 2017, section 3.2.2), as VQGAN uses
it (Esser et al. 2021, section 3.1): 4x4 convolutions with LeakyReLU(0.2), ``n_layers``
of them with stride 2 doubling the width (capped at 8x the base width), then a stride-1
convolution and a final one-channel 4x4 convolution. Each output logit judges one patch of
the input (70 x 70 pixels for three layers), so the discriminator scores local texture,
which is what a pixel loss leaves blurry.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vqtok.registry import register

DISCRIMINATOR_NORMS = ("batch", "group", "none")
MAX_CHANNELS = 4096  # caps what a config can make vqtok allocate


@register
class PatchDiscriminator(nn.Module):
    """Image ``(B, in_channels, H, W)`` -> logits ``(B, 1, h, w)``, one per patch.

    Args:
        in_channels: image channels (3 for RGB, 1 for grey).
        channels: width of the first layer (pix2pix's ``ndf``).
        n_layers: stride-2 layers; each halves the resolution. Images must be at least
            :attr:`min_size` pixels on each side.
        norm: ``"batch"`` (BatchNorm, as pix2pix and VQGAN), ``"group"`` (GroupNorm with 32
            groups or fewer, independent of the batch) or ``"none"``.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3,
                 norm: str = "batch") -> None:
        super().__init__()
        for name, value, most in (("in_channels", in_channels, 64), ("channels", channels,
                                  MAX_CHANNELS // 8), ("n_layers", n_layers, 8)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
                raise ValueError(f"{name} must be an int in [1, {most}], got {value!r}")
        if norm not in DISCRIMINATOR_NORMS:
            raise ValueError(f"norm must be one of {DISCRIMINATOR_NORMS}, got {norm!r}")
        self.in_channels = in_channels
        self.n_layers = n_layers

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            # A norm's shift makes the conv's bias redundant (pix2pix drops it too).
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride, 1,
                                                 bias=norm == "none")]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(c_out))
            elif norm == "group":
                layers.append(nn.GroupNorm(math.gcd(32, c_out), c_out))
            return [*layers, nn.LeakyReLU(0.2)]

        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for n in range(1, n_layers + 1):
            out = channels * min(2 ** n, 8)
            layers += block(width, out, 2 if n < n_layers else 1)
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)
        self.reset_parameters()

    @property
    def min_size(self) -> int:
        """The smallest image side that leaves at least one logit: ``n_layers`` halvings,
        then two 4x4 convolutions of padding 1 that each take one position off."""
        return 3 * 2 ** self.n_layers

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DCGAN's initialisation (Radford et al. 2016, section 4), as pix2pix uses it:
        conv weights from N(0, 0.02), norm scales from N(1, 0.02), zero shifts."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape (B, {self.in_channels}, H, W), got "
                             f"shape {tuple(x.shape)}")
        if min(x.shape[2:]) < self.min_size:
            raise ValueError(f"images of {x.shape[2]}x{x.shape[3]} are too small for a "
                             f"{self.n_layers}-layer discriminator (at least {self.min_size} "
                             f"pixels a side); lower n_layers")
        return self.layers(x)
