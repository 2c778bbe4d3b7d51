"""The convolutional encoder (pixels -> feature map of width ``dim``) and its mirror.

Level ``i`` works at ``channels * channel_mult[i]`` channels; a stride-2 step between
consecutive levels gives a downsampling factor of ``2 ** (len(channel_mult) - 1)``
(``(1, 2)`` -> 2, ``(1, 2, 2)`` -> 4, ``(1, 1, 2, 2)`` -> 8, ``(1, 1, 2, 2, 4)`` -> 16).
The layout follows VQGAN (Esser et al. 2021, section 3.1 and appendix).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    """What the encoder and the decoder share: their arguments' checks and sizes.

    Sets ``dim``, ``downsample_factor`` (for a decoder, the encoder's factor it undoes),
    the image channels under their argument's name, ``widths`` (of each level) and
    ``make_norm`` (the norm layer factory).
    """

    def __init__(self, image_arg: str, image_channels: int, channels: int,
                 channel_mult: Sequence[int], num_res_blocks: int, dim: int,
                 num_groups: int, norm: str) -> None:
        super().__init__()
        check_positive(**{image_arg: image_channels})
        self.widths = check_widths(channels, channel_mult, num_res_blocks, dim, num_groups)
        self.make_norm: Callable[[int], nn.Module] = norm_factory(norm, num_groups)  # picklable
        setattr(self, image_arg, image_channels)
        self.dim = dim
        self.downsample_factor = 2 ** (len(self.widths) - 1)


@register
class Encoder(_ConvNet):
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

    def __init__(self, in_channels: int = 3, channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1, dim: int = 32,
                 attention: bool = False, num_groups: int = 32, norm: str = "group") -> None:
        super().__init__("in_channels", in_channels, channels, channel_mult, num_res_blocks,
                         dim, num_groups, norm)

        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        width = channels
        for level, level_width in enumerate(self.widths):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(width, level_width, self.make_norm))
                width = level_width
            if level < len(self.widths) - 1:
                layers.append(Downsample(width))
        layers += middle_blocks(width, attention, self.make_norm)
        layers += [self.make_norm(width), nn.SiLU(), nn.Conv2d(width, dim, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        check_feature_map(x, self.in_channels, self.downsample_factor, "image")
        return self.layers(x)


@register
class Decoder(_ConvNet):
    """Features ``(B, dim, h, w)`` -> image ``(B, out_channels, h * f, w * f)``.

    The mirror of :class:`Encoder` with the same arguments: the levels run from the last
    (lowest resolution) to the first, with nearest-neighbour upsampling + conv between
    them. The output is not squashed; images live in [-1, 1].
    """

    def __init__(self, out_channels: int = 3, channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1, dim: int = 32,
                 attention: bool = False, num_groups: int = 32, norm: str = "group") -> None:
        super().__init__("out_channels", out_channels, channels, channel_mult, num_res_blocks,
                         dim, num_groups, norm)

        width = self.widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(dim, width, 3, padding=1)]
        layers += middle_blocks(width, attention, self.make_norm)
        for level in reversed(range(len(self.widths))):
            for _ in range(num_res_blocks):
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
