"""The convolutional encoder (pixels -> feature map of width ``dim``) and its mirror.

Level ``i`` works at ``channels * channel_mult[i]`` channels; a stride-2 step between
consecutive levels gives a downsampling factor of ``2 ** (len(channel_mult) - 1)``
(``(1, 2)`` -> 2, ``(1, 2, 2)`` -> 4, ``(1, 1, 2, 2)`` -> 8, ``(1, 1, 2, 2, 4)`` -> 16).
The layout follows VQGAN (Esser et al. 2021, section 3.1 and appendix).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from vqtok.models.blocks import (
    Downsample,
    ResBlock,
    Upsample,
    check_feature_map,
    check_widths,
    middle_blocks,
    norm_factory,
)
from vqtok.registry import register
from vqtok.validation import check_positive


class _ConvNet(nn.Module):
    """The arguments the encoder and the decoder share, written once: each takes them by
    keyword (its ``**arch``, :mod:`vqtok.registry`) after its image channels.

    Sets ``dim``, ``downsample_factor`` (for a decoder, the encoder's factor it undoes),
    ``widths`` (of each level) and ``make_norm`` (the norm layer factory), and keeps
    ``channels``, ``num_res_blocks`` and ``attention``.

    Args:
        channels: base width of the first level.
        channel_mult: width multiplier of each level; ``len - 1`` stride-2 steps.
        num_res_blocks: residual blocks per level.
        dim: the latent's channels: the encoder's output, the quantizer's input dim and
            the decoder's input.
        attention: add a single-head self-attention block at the lowest resolution.
        num_groups: GroupNorm groups (each norm uses ``gcd(num_groups, width)``).
        norm: ``"group"`` (GroupNorm, as VQGAN) or ``"channel"`` (per-position
            normalisation over the channels, :class:`~vqtok.models.blocks.ChannelNorm`:
            use it when the model trains on crops smaller than the images it will
            tokenize; see :mod:`vqtok.models.blocks`).
    """

    def __init__(self, channels: int = 64, channel_mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 1, dim: int = 32, attention: bool = False,
                 num_groups: int = 32, norm: str = "group") -> None:
        super().__init__()
        self.widths = check_widths(channels, channel_mult, num_res_blocks, dim, num_groups)
        self.make_norm: Callable[[int], nn.Module] = norm_factory(norm, num_groups)  # picklable
        self.channels, self.num_res_blocks, self.attention = channels, num_res_blocks, attention
        self.dim = dim
        self.downsample_factor = 2 ** (len(self.widths) - 1)


@register
class Encoder(_ConvNet):
    """Image ``(B, in_channels, H, W)`` -> features ``(B, dim, H / f, W / f)``.

    Args:
        in_channels: image channels (3 for RGB, 1 for grey).
        **arch: by keyword, the arguments it shares with :class:`Decoder`: ``channels``,
            ``channel_mult``, ``num_res_blocks``, ``dim``, ``attention``, ``num_groups``
            and ``norm``, described on ``_ConvNet``; ``inspect.signature(Encoder)`` shows
            their defaults.
    """

    def __init__(self, in_channels: int = 3, **arch: Any) -> None:
        check_positive(in_channels=in_channels)
        super().__init__(**arch)
        self.in_channels = in_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, self.channels, 3, padding=1)]
        width = self.channels
        for level, level_width in enumerate(self.widths):
            for _ in range(self.num_res_blocks):
                layers.append(ResBlock(width, level_width, self.make_norm))
                width = level_width
            if level < len(self.widths) - 1:
                layers.append(Downsample(width))
        layers += middle_blocks(width, self.attention, self.make_norm)
        layers += [self.make_norm(width), nn.SiLU(), nn.Conv2d(width, self.dim, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        check_feature_map(x, self.in_channels, self.downsample_factor, "image")
        return self.layers(x)


@register
class Decoder(_ConvNet):
    """Features ``(B, dim, h, w)`` -> image ``(B, out_channels, h * f, w * f)``.

    The mirror of :class:`Encoder`, with its arguments (``out_channels`` for
    ``in_channels``): the levels run from the last (lowest resolution) to the first, with
    nearest-neighbour upsampling + conv between them. The output is not squashed; images
    live in [-1, 1].
    """

    def __init__(self, out_channels: int = 3, **arch: Any) -> None:
        check_positive(out_channels=out_channels)
        super().__init__(**arch)
        self.out_channels = out_channels
        width = self.widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(self.dim, width, 3, padding=1)]
        layers += middle_blocks(width, self.attention, self.make_norm)
        for level in reversed(range(len(self.widths))):
            for _ in range(self.num_res_blocks):
                layers.append(ResBlock(width, self.widths[level], self.make_norm))
                width = self.widths[level]
            if level > 0:
                layers.append(Upsample(width))
        layers += [self.make_norm(width), nn.SiLU(), nn.Conv2d(width, out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    @property
    def last_layer(self) -> nn.Parameter:
        """The weight of the output convolution: where VQGAN's adaptive GAN weight compares
        gradients (Esser et al. 2021, eq. 7)."""
        return self.layers[-1].weight

    def forward(self, z: Tensor) -> Tensor:
        check_feature_map(z, self.dim, 1, "feature map")
        return self.layers(z)
