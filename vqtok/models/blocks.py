"""Convolutional building blocks shared by the encoder and the decoder.

The design follows the VQGAN autoencoder (Esser et al. 2021, "Taming Transformers",
section 3.1 and appendix): pre-activation residual blocks (GroupNorm, SiLU, 3x3 conv),
stride-2 conv downsampling, nearest-neighbour upsampling followed by a conv, and one
single-head self-attention block at the lowest resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """GroupNorm with ``gcd(num_groups, channels)`` groups: ``num_groups`` whenever it
    divides the width, fewer for narrow test-sized widths (8 channels -> 8 groups)."""
    return nn.GroupNorm(math.gcd(num_groups, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(SiLU(GN(conv(SiLU(GN(x))))))``.

    A 1x1 conv maps the skip path when the width changes.
    """

    def __init__(self, in_channels: int, out_channels: int, num_groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, num_groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            nn.Identity() if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions of a 2D map, with a residual."""

    def __init__(self, channels: int, num_groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, num_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        height = x.shape[2]
        qkv = rearrange(self.qkv(self.norm(x)), "b (n c) h w -> n b 1 (h w) c", n=3)
        q, k, v = qkv.unbind(0)  # each (B, 1, HW, C): one head
        # Vaswani et al. 2017, section 3.2.1: softmax(q k^T / sqrt(C)) v
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=height)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve height and width with a stride-2 3x3 conv (even sizes map to exactly half)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double height and width: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def middle_blocks(channels: int, attention: bool, num_groups: int) -> list[nn.Module]:
    """The lowest-resolution stage: a residual block, then attention + a residual block."""
    blocks: list[nn.Module] = [ResBlock(channels, channels, num_groups)]
    if attention:
        blocks += [SelfAttention(channels, num_groups), ResBlock(channels, channels, num_groups)]
    return blocks


def check_widths(
    channels: int, channel_mult: Sequence[int], num_res_blocks: int, dim: int, num_groups: int
) -> tuple[int, ...]:
    """Validate the shared encoder/decoder arguments; returns the width of each level."""
    is_sequence = isinstance(channel_mult, Sequence) and not isinstance(
        channel_mult, (str, bytes)
    )
    if not is_sequence or len(channel_mult) == 0 or any(
        not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in channel_mult
    ):
        raise ValueError(
            f"channel_mult must be a non-empty sequence of positive ints, got {channel_mult!r}"
        )
    for name, value in (("channels", channels), ("num_res_blocks", num_res_blocks),
                        ("dim", dim), ("num_groups", num_groups)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return tuple(channels * m for m in channel_mult)


def check_feature_map(x: Tensor, channels: int, factor: int, what: str) -> None:
    """Raise ValueError unless ``x`` is ``(B, channels, H, W)`` with H, W multiples of
    ``factor``."""
    if x.ndim != 4:
        raise ValueError(f"expected {what} of shape (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(
            f"expected {what} with {channels} channels, got shape {tuple(x.shape)}"
        )
    height, width = x.shape[2], x.shape[3]
    if height % factor or width % factor or height == 0 or width == 0:
        raise ValueError(
            f"{what} spatial size {height}x{width} must be a positive multiple of the "
            f"downsampling factor {factor}"
        )
