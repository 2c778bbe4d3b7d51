"""The causal video encoder (frames -> feature volume of width ``dim``) and its mirror.

A clip is a tensor ``(B, C, T, H, W)``. Every convolution is 3-D and *causal in time*: it
is padded only towards the past, with copies of the first frame, so an output at time
``t`` depends on inputs at times ``<= t`` only (docs/video.md#causality). Time is
downsampled by stride-2 causal convolutions: each maps ``1 + 2m`` frames to ``1 + m``,
the first output seeing the first frame alone; with ``temporal_factor`` 4 (two such steps)
a clip of ``1 + 4k`` frames becomes ``1 + k`` latent frames, as in MAGVIT-v2 (Yu et al.
2024, section 3.2) and NVIDIA Cosmos. So a single picture is a one-frame clip, encoded by
the same weights: the first latent frame depends on the first frame and nothing else.

Space is downsampled as in :class:`~vqtok.models.Encoder` (a stride-2 step between
consecutive levels of ``channel_mult``); the temporal steps are the last
``log2(temporal_factor)`` of them, where the maps are smallest. The decoder mirrors the
encoder: nearest-neighbour upsampling in space and, at the temporal levels, each latent
frame but the first repeated twice in time (``1 + m`` -> ``1 + 2m``), each followed by a
causal convolution; so a decoded frame depends only on latent frames at or before its own.

Normalisation is per frame, never across time (which would break causality): GroupNorm
over the channels and pixels of one frame (``norm="group"``) or per position over the
channels (``norm="channel"``, :class:`~vqtok.models.blocks.ChannelNorm`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqtok.models.blocks import NormFactory, check_widths, norm_factory
from vqtok.registry import register
from vqtok.validation import check_positive


def latent_frames(frames: int, temporal_factor: int) -> int:
    """Latent frames of a clip of ``frames = 1 + temporal_factor * k`` frames: ``1 + k``."""
    return 1 + (frames - 1) // temporal_factor


def valid_frame_counts(temporal_factor: int) -> str:
    """The accepted frame counts in words, for error messages: ``"1 + 4k (1, 5, 9, 13, 17,
    ...)"``."""
    examples = ", ".join(str(1 + temporal_factor * k) for k in range(5))
    return f"1 + {temporal_factor}k ({examples}, ...)"


def check_clip(x: Tensor, channels: int, spatial_factor: int, temporal_factor: int,
               what: str) -> None:
    """Raise ValueError unless ``x`` is ``(B, channels, T, H, W)`` with ``T = 1 +
    temporal_factor * k`` and H, W positive multiples of ``spatial_factor``."""
    if not isinstance(x, Tensor) or x.ndim != 5:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected a {what} of shape (B, C, T, H, W), got {shape}")
    if x.shape[1] != channels:
        raise ValueError(f"expected a {what} with {channels} channels, got shape "
                         f"{tuple(x.shape)}")
    frames, height, width = x.shape[2:]
    if frames < 1 or (frames - 1) % temporal_factor:
        raise ValueError(f"{what} has {frames} frames; the model takes "
                         f"{valid_frame_counts(temporal_factor)} frames")
    if height % spatial_factor or width % spatial_factor or height == 0 or width == 0:
        raise ValueError(f"{what} frame size {height}x{width} must be a positive multiple of "
                         f"the spatial downsampling factor {spatial_factor}")


class CausalConv3d(nn.Module):
    """3-D convolution padded in time only towards the past, with copies of the first
    frame (``time_kernel - 1`` of them), and with zeros in space (``(k - 1) / 2`` a side,
    as the image encoder's 2-D convolutions). ``time_kernel`` defaults to ``kernel_size``;
    1 makes it a per-frame 2-D convolution.

    With stride 1 in time it keeps the number of frames; with stride 2 and a temporal
    kernel of 3 it maps ``1 + 2m`` frames to ``1 + m``: output ``i`` reads input frames
    ``2i - 2 .. 2i`` (the first output only the first frame).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: tuple[int, int] = (1, 1), time_kernel: int | None = None) -> None:
        super().__init__()
        time_kernel = kernel_size if time_kernel is None else time_kernel
        self.time_pad = time_kernel - 1
        self.conv = nn.Conv3d(in_channels, out_channels, (time_kernel, kernel_size, kernel_size),
                              stride=(stride[0], stride[1], stride[1]),
                              padding=(0, kernel_size // 2, kernel_size // 2))

    def forward(self, x: Tensor) -> Tensor:
        conv = self.conv
        if conv.kernel_size[0] == 1 and conv.stride[0] == 1:  # per frame: a 2-D convolution
            frames = x.shape[2]
            y = F.conv2d(rearrange(x, "b c t h w -> (b t) c h w"), conv.weight[:, :, 0],
                         conv.bias, conv.stride[1:], conv.padding[1:])
            return rearrange(y, "(b t) c h w -> b c t h w", t=frames)
        if self.time_pad:
            first = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
            x = torch.cat([first, x], dim=2)
        return conv(x)


class FrameNorm(nn.Module):
    """A 2-D normalisation applied to each frame by itself (module doc)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        frames = x.shape[2]
        y = self.norm(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", t=frames)


class ResBlock3d(nn.Module):
    """Pre-activation residual block of two causal 3x3x3 convolutions (the 3-D form of
    :class:`~vqtok.models.blocks.ResBlock`); ``time_kernel=1``: 1x3x3, per frame."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormFactory,
                 time_kernel: int = 3) -> None:
        super().__init__()
        self.norm1 = FrameNorm(norm(in_channels))
        self.conv1 = CausalConv3d(in_channels, out_channels, time_kernel=time_kernel)
        self.norm2 = FrameNorm(norm(out_channels))
        self.conv2 = CausalConv3d(out_channels, out_channels, time_kernel=time_kernel)
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv3d(in_channels, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample3d(nn.Module):
    """Halve height and width, and with ``temporal=True`` map ``1 + 2m`` frames to
    ``1 + m``: a causal 3x3x3 convolution of stride 2 (in time 1 or 2)."""

    def __init__(self, channels: int, temporal: bool, time_kernel: int = 3) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, stride=(2 if temporal else 1, 2),
                                 time_kernel=3 if temporal else time_kernel)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample3d(nn.Module):
    """Double height and width (nearest neighbour), and with ``temporal=True`` map ``1 +
    m`` frames to ``1 + 2m`` (every frame but the first repeated twice), then a causal
    3x3x3 convolution. Output frame ``j`` comes from input frame ``ceil(j / 2)``."""

    def __init__(self, channels: int, temporal: bool, time_kernel: int = 3) -> None:
        super().__init__()
        self.temporal = temporal
        self.conv = CausalConv3d(channels, channels, time_kernel=time_kernel)

    def forward(self, x: Tensor) -> Tensor:
        if self.temporal:
            x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(2, dim=2)], dim=2)
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return self.conv(x)


class _VideoNet(nn.Module):
    """The arguments the video encoder and decoder share, written once: each takes them by
    keyword (its ``**arch``, :mod:`vqtok.registry`) after its frame channels; their checks
    and shape facts.

    Args:
        channels: base width of the first level.
        channel_mult: width multiplier of each level; ``len - 1`` stride-2 steps in space
            (``(1, 2, 2, 4)``: 8x).
        num_res_blocks: residual blocks per level.
        dim: the latent's channels: the encoder's output, the quantizer's input dim and
            the decoder's input.
        temporal_factor: frames per latent frame after the first (1, 2, 4, ...; at most
            the spatial factor): the last ``log2(temporal_factor)`` steps also halve time.
        per_frame_levels: the first this-many levels convolve each frame by itself
            (1x3x3 kernels; the temporal downsampling steps keep 3x3x3): the full-resolution
            levels cost the most, and time is mixed at the smaller maps. 0: all 3x3x3.
        num_groups: GroupNorm groups (``gcd(num_groups, width)`` per norm).
        norm: ``"group"`` (per-frame GroupNorm) or ``"channel"`` (per position).
    """

    def __init__(self, channels: int = 32, channel_mult: Sequence[int] = (1, 2, 2, 4),
                 num_res_blocks: int = 1, dim: int = 16, temporal_factor: int = 4,
                 per_frame_levels: int = 0, num_groups: int = 32, norm: str = "group") -> None:
        super().__init__()
        self.widths = check_widths(channels, channel_mult, num_res_blocks, dim, num_groups)
        self.make_norm = norm_factory(norm, num_groups)
        steps = len(self.widths) - 1
        valid = [2 ** n for n in range(steps + 1)]
        if isinstance(temporal_factor, bool) or temporal_factor not in valid:
            raise ValueError(f"temporal_factor must be one of {valid} (a power of 2 no larger "
                             f"than the spatial factor {2 ** steps}), got {temporal_factor!r}")
        if isinstance(per_frame_levels, bool) or per_frame_levels not in range(steps + 2):
            raise ValueError(f"per_frame_levels must be an int in [0, {steps + 1}] (the "
                             f"number of levels), got {per_frame_levels!r}")
        self.channels, self.num_res_blocks, self.dim = channels, num_res_blocks, dim
        self.downsample_factor = 2 ** steps
        self.temporal_factor = temporal_factor
        temporal_steps = temporal_factor.bit_length() - 1
        # Step l goes from level l to level l + 1; the last `temporal_steps` are temporal.
        self.temporal_step = [step >= steps - temporal_steps for step in range(steps)]
        self.per_frame_levels = per_frame_levels

    def time_kernel(self, level: int) -> int:
        """The temporal kernel of the convolutions at ``level``: 1 (per frame) for the
        first ``per_frame_levels`` levels, else 3."""
        return 1 if level < self.per_frame_levels else 3


@register
class VideoEncoder(_VideoNet):
    """Clip ``(B, in_channels, T, H, W)``, ``T = 1 + temporal_factor * k`` -> features
    ``(B, dim, 1 + k, H / f, W / f)``, causal in time (module doc).

    Args:
        in_channels: frame channels (3 for RGB, 1 for grey).
        **arch: by keyword, the arguments it shares with :class:`VideoDecoder`:
            ``channels``, ``channel_mult``, ``num_res_blocks``, ``dim``,
            ``temporal_factor``, ``per_frame_levels``, ``num_groups`` and ``norm``,
            described on ``_VideoNet``; ``inspect.signature(VideoEncoder)`` shows their
            defaults.
    """

    def __init__(self, in_channels: int = 3, **arch: Any) -> None:
        check_positive(in_channels=in_channels)
        super().__init__(**arch)
        self.in_channels = in_channels
        kernel = self.time_kernel
        layers: list[nn.Module] = [CausalConv3d(in_channels, self.channels,
                                                time_kernel=kernel(0))]
        width = self.channels
        last = len(self.widths) - 1
        for level, level_width in enumerate(self.widths):
            for _ in range(self.num_res_blocks):
                layers.append(ResBlock3d(width, level_width, self.make_norm, kernel(level)))
                width = level_width
            if level < last:
                layers.append(Downsample3d(width, self.temporal_step[level], kernel(level)))
        layers += [ResBlock3d(width, width, self.make_norm, kernel(last)),
                   FrameNorm(self.make_norm(width)), nn.SiLU(),
                   CausalConv3d(width, self.dim, time_kernel=kernel(last))]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        check_clip(x, self.in_channels, self.downsample_factor, self.temporal_factor, "clip")
        return self.layers(x)


@register
class VideoDecoder(_VideoNet):
    """Features ``(B, dim, 1 + k, h, w)`` -> clip ``(B, out_channels, 1 + temporal_factor
    * k, h * f, w * f)``: the mirror of :class:`VideoEncoder`, with its arguments
    (``out_channels`` for ``in_channels``), causal in time. The output is not squashed;
    frames live in [-1, 1]."""

    def __init__(self, out_channels: int = 3, **arch: Any) -> None:
        check_positive(out_channels=out_channels)
        super().__init__(**arch)
        self.out_channels = out_channels
        kernel = self.time_kernel
        last = len(self.widths) - 1
        width = self.widths[-1]
        layers: list[nn.Module] = [CausalConv3d(self.dim, width, time_kernel=kernel(last)),
                                   ResBlock3d(width, width, self.make_norm, kernel(last))]
        for level in reversed(range(len(self.widths))):
            for _ in range(self.num_res_blocks):
                layers.append(ResBlock3d(width, self.widths[level], self.make_norm,
                                         kernel(level)))
                width = self.widths[level]
            if level > 0:  # up to level - 1, whose kernel the convolution takes
                layers.append(Upsample3d(width, self.temporal_step[level - 1],
                                         kernel(level - 1)))
        layers += [FrameNorm(self.make_norm(width)), nn.SiLU(),
                   CausalConv3d(width, out_channels, time_kernel=kernel(0))]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        check_clip(z, self.dim, 1, 1, "latent clip")
        return self.layers(z)
