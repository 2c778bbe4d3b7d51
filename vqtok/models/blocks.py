"""Convolutional building blocks shared by the encoder and the decoder.

The design follows the VQGAN autoencoder (Esser et al. 2021, "Taming Transformers",
section 3.1 and appendix): pre-activation residual blocks (GroupNorm, SiLU, 3x3 conv),
stride-2 conv downsampling, nearest-neighbour upsampling followed by a conv, and one
single-head self-attention block at the lowest resolution.

The normalisation is chosen per model: GroupNorm as in VQGAN (``norm="group"``), or
:class:`ChannelNorm` (``norm="channel"``), whose statistics never span positions.
GroupNorm's do: a model trained on 32 x 32 crops and then run on a whole 640 x 427 photo
normalises with statistics of the whole image instead of a crop, and lost 3.5 dB of PSNR
that way (20.3 dB on 32 x 32 tiles of a held-out photo, 16.8 dB on the photo in one piece).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

NORMS = ("group", "channel")
NormFactory = Callable[[int], nn.Module]


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """GroupNorm with ``gcd(num_groups, channels)`` groups: ``num_groups`` whenever it
    divides the width, fewer for narrow test-sized widths (8 channels -> 8 groups)."""
    return nn.GroupNorm(math.gcd(num_groups, channels), channels, eps=1e-6)


class ChannelNorm(nn.Module):
    """Normalise each position over its channels: a LayerNorm of the C values at every
    pixel, then a learned per-channel scale and shift. Resolution-independent: a pixel's
    output depends on that pixel's features only, never on the size of the image."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        channels_last = x.movedim(1, -1)  # (B, H, W, C)
        out = F.layer_norm(channels_last, (x.shape[1],), self.weight, self.bias, self.eps)
        return out.movedim(-1, 1)


def reuse_buffers() -> bool:
    """Whether a block may write its activations and residual sums into the buffers it
    just made: only without autograd, which would keep them for the backward pass (SiLU's
    gradient needs its input). On CPU every large tensor is a fresh memory mapping whose
    pages the kernel faults in, so one allocation fewer per activation makes inference
    faster; the values are the same."""
    return not torch.is_grad_enabled()


def norm_factory(norm: str, num_groups: int) -> NormFactory:
    """``channels -> normalisation layer`` for ``norm`` in :data:`NORMS`."""
    if norm == "group":
        return functools.partial(group_norm, num_groups=num_groups)
    if norm == "channel":
        return ChannelNorm
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(SiLU(N(conv(SiLU(N(x))))))``, N the norm.

    A 1x1 conv maps the skip path when the width changes. ``bias=False`` drops the
    convolutions' biases (MAGVIT-v2's blocks, :mod:`vqtok.models.magvit2`).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: NormFactory,
                 bias: bool = True) -> None:
        super().__init__()
        self.norm1 = norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
        self.norm2 = norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.skip = (
            nn.Identity() if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        )

    def forward(self, x: Tensor) -> Tensor:
        inplace = reuse_buffers()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = self.conv2(F.silu(self.norm2(h), inplace=inplace))
        return h.add_(self.skip(x)) if inplace else self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions of a 2D map, with a residual."""

    def __init__(self, channels: int, norm: NormFactory) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        height = x.shape[2]
        qkv = rearrange(self.qkv(self.norm(x)), "b (n c) h w -> n b 1 (h w) c", n=3)
        q, k, v = qkv.unbind(0)  # each (B, 1, HW, C): one head
        # Vaswani et al. 2017, section 3.2.1: softmax(q k^T / sqrt(C)) v
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=height)
        return self.proj(out).add_(x) if reuse_buffers() else x + self.proj(out)


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


def middle_blocks(channels: int, attention: bool, norm: NormFactory) -> list[nn.Module]:
    """The lowest-resolution stage: a residual block, then attention + a residual block."""
    blocks: list[nn.Module] = [ResBlock(channels, channels, norm)]
    if attention:
        blocks += [SelfAttention(channels, norm), ResBlock(channels, channels, norm)]
    return blocks


MAX_WIDTH = 8192
"""The widest level, and the largest ``dim``: caps what a config file can make vqtok
allocate before any weight is read."""
MAX_LEVELS = 8  # a downsampling factor of at most 2^7
MAX_RES_BLOCKS = 64


def check_widths(
    channels: int, channel_mult: Sequence[int], num_res_blocks: int, dim: int, num_groups: int
) -> tuple[int, ...]:
    """Validate the shared encoder/decoder arguments; returns the width of each level."""
    is_sequence = isinstance(channel_mult, Sequence) and not isinstance(
        channel_mult, (str, bytes)
    )
    if not is_sequence or not 0 < len(channel_mult) <= MAX_LEVELS or any(
        not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in channel_mult
    ):
        raise ValueError(f"channel_mult must be a sequence of 1 to {MAX_LEVELS} positive ints, "
                         f"got {channel_mult!r}")
    for name, value, most in (("channels", channels, MAX_WIDTH),
                              ("num_res_blocks", num_res_blocks, MAX_RES_BLOCKS),
                              ("dim", dim, MAX_WIDTH), ("num_groups", num_groups, MAX_WIDTH)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
            raise ValueError(f"{name} must be an int in [1, {most}], got {value!r}")
    widths = tuple(channels * m for m in channel_mult)
    if max(widths) > MAX_WIDTH:
        raise ValueError(f"channels * channel_mult must stay <= {MAX_WIDTH}, got widths "
                         f"{list(widths)}")
    return widths


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
