"""The convolutional encoder (pixels -> feature map of width ``dim``) and its mirror.

Level ``i`` works at ``channels * channel_mult[i]`` channels; a stride-2 step between
consecutive levels gives a downsampling factor of ``2 ** (len(channel_mult) - 1)``
(``(1, 2)`` -> 2, ``(1, 2, 2)`` -> 4, ``(1, 1, 2, 2)`` -> 8, ``(1, 1, 2, 2, 4)`` -> 16).
The layout follows VQGAN (Esser et al. 2021, section 3.1 and appendix).
"""

from __future__ import annotations

from collections.abc import Sequence

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


@register
class Encoder(nn.Module):
    """Image ``(B, in_channels, H, W)`` -> features ``(B, dim, H / f, W / f)``.

    Args:
        in_channels: image channels (3 for RGB, 1 for grey).
        channels: base width of the first level.
        channel_mult: width multiplier of each level; ``len - 1`` stride-2 steps.
        num_res_blocks: residual blocks per level.
        dim: output channels, the quantizer's input dim.
        attention: add a single-head self-attention block at the lowest resolution.
        num_groups: GroupNorm groups (each norm uses ``gcd(num_groups, width)``).
        norm: ``"group"`` (GroupNorm, as VQGAN) or ``"channel"`` (per-position
            normalisation over the channels, :class:`~vqtok.models.blocks.ChannelNorm`:
            use it when the model trains on crops smaller than the images it will
            tokenize; see :mod:`vqtok.models.blocks`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        dim: int = 32,
        attention: bool = False,
        num_groups: int = 32,
        norm: str = "group",
    ) -> None:
        super().__init__()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        widths = check_widths(channels, channel_mult, num_res_blocks, dim, num_groups)
        make_norm = norm_factory(norm, num_groups)
        self.in_channels = in_channels
        self.dim = dim
        self.downsample_factor = 2 ** (len(widths) - 1)

        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        width = channels
        for level, level_width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(width, level_width, make_norm))
                width = level_width
            if level < len(widths) - 1:
                layers.append(Downsample(width))
        layers += middle_blocks(width, attention, make_norm)
        layers += [make_norm(width), nn.SiLU(), nn.Conv2d(width, dim, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        check_feature_map(x, self.in_channels, self.downsample_factor, "image")
        return self.layers(x)


@register
class Decoder(nn.Module):
    """Features ``(B, dim, h, w)`` -> image ``(B, out_channels, h * f, w * f)``.

    The mirror of :class:`Encoder` with the same arguments: the levels run from the last
    (lowest resolution) to the first, with nearest-neighbour upsampling + conv between
    them. The output is not squashed; images live in [-1, 1].
    """

    def __init__(
        self,
        out_channels: int = 3,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        dim: int = 32,
        attention: bool = False,
        num_groups: int = 32,
        norm: str = "group",
    ) -> None:
        super().__init__()
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
        widths = check_widths(channels, channel_mult, num_res_blocks, dim, num_groups)
        make_norm = norm_factory(norm, num_groups)
        self.out_channels = out_channels
        self.dim = dim
        self.downsample_factor = 2 ** (len(widths) - 1)
        """The encoder downsampling factor this decoder undoes."""

        width = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(dim, width, 3, padding=1)]
        layers += middle_blocks(width, attention, make_norm)
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(width, widths[level], make_norm))
                width = widths[level]
            if level > 0:
                layers.append(Upsample(width))
        layers += [make_norm(width), nn.SiLU(), nn.Conv2d(width, out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        check_feature_map(z, self.dim, 1, "feature map")
        return self.layers(z)


__all__ = ["Decoder", "Encoder"]
