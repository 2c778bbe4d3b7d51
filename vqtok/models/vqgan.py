"""The VQGAN encoder and decoder as published (Esser et al. 2021, "Taming Transformers",
appendix, table 7), with the layout that taming-transformers, diffusers' ``VQModel`` and
LlamaGen's tokenizer share, so their trained weights load unchanged (docs/interop.md).

Where it differs from :class:`~vqtok.models.Encoder` / :class:`~vqtok.models.Decoder`:

* the width of each level is given as is (``widths``), with a stem of its own width
  (``channels``), and the decoder runs ``num_res_blocks + 1`` residual blocks per level;
* self-attention after each residual block of the levels in ``attention_levels``, and
  in the middle stage between its two residual blocks (``mid_attention``);
* downsampling pads only the bottom and the right by one zero row and column, then runs a
  3x3 convolution of stride 2 without padding;
* GroupNorm with exactly ``num_groups`` groups and ``eps`` (1e-6 in all three sources);
* the 1x1 ``quant_conv`` (``z_channels`` -> ``dim``) ends the encoder and the 1x1
  ``post_quant_conv`` (``dim`` -> ``z_channels``) starts the decoder.

Dropout is not part of the model (the published configs use 0.0, and evaluation skips it).
The modules keep the published nesting (``down[i].block[j]``, ``down[i].attn[j]``,
``mid.block_1``, ``up[i]`` indexed by level), so a converted state dict differs from
taming's only inside the residual and attention blocks (:mod:`vqtok.interop`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from vqtok.models.blocks import (
    MAX_LEVELS,
    MAX_RES_BLOCKS,
    MAX_WIDTH,
    NormFactory,
    ResBlock,
    SelfAttention,
    Upsample,
    check_feature_map,
    reuse_buffers,
)
from vqtok.registry import register
from vqtok.validation import check_positive


class CornerPadDownsample(nn.Module):
    """Halve height and width: one zero row at the bottom and one zero column at the
    right, then a 3x3 convolution of stride 2 without padding (the VQGAN layout; an even
    side ``2n`` becomes ``n``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (left, right, top, bottom)


class Level(nn.Module):
    """One resolution: residual blocks (``block``), each followed by self-attention when
    the level has it (``attn``), then an optional resampling step. ``bias``: the residual
    blocks' convolutions have biases."""

    def __init__(self, widths_in: Sequence[int], width: int, attention: bool,
                 norm: NormFactory, resample: nn.Module | None, resample_name: str,
                 bias: bool = True) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResBlock(w, width, norm, bias) for w in widths_in)
        self.attn = nn.ModuleList(SelfAttention(width, norm) for _ in widths_in) if attention \
            else nn.ModuleList()
        self.resample_name = resample_name
        if resample is not None:
            self.add_module(resample_name, resample)

    def forward(self, h: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        resample = getattr(self, self.resample_name, None)
        return h if resample is None else resample(h)


class _Middle(nn.Module):
    """The lowest resolution: a residual block, self-attention (``mid_attention``), a
    residual block."""

    def __init__(self, width: int, attention: bool, norm: NormFactory) -> None:
        super().__init__()
        self.block_1 = ResBlock(width, width, norm)
        self.attn_1 = SelfAttention(width, norm) if attention else nn.Identity()
        self.block_2 = ResBlock(width, width, norm)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class VQGANNet(nn.Module):
    """The arguments the encoder and the decoder share, checked once."""

    def __init__(self, widths: Sequence[int], num_res_blocks: int,
                 attention_levels: Sequence[int], z_channels: int, dim: int, num_groups: int,
                 eps: float, extra_widths: Sequence[int]) -> None:
        super().__init__()
        if (not isinstance(widths, Sequence) or isinstance(widths, str)
                or not 0 < len(widths) <= MAX_LEVELS):
            raise ValueError(f"widths must be a list of 1 to {MAX_LEVELS} ints, got {widths!r}")
        for name, value, most in (("num_res_blocks", num_res_blocks, MAX_RES_BLOCKS),
                                  ("z_channels", z_channels, MAX_WIDTH), ("dim", dim, MAX_WIDTH),
                                  ("num_groups", num_groups, MAX_WIDTH),
                                  *(("widths", w, MAX_WIDTH) for w in (*widths, *extra_widths))):
            check_positive(**{name: value})
            if value > most:
                raise ValueError(f"{name} must be at most {most}, got {value!r}")
        bad_groups = sorted({w for w in (*widths, *extra_widths) if w % num_groups})
        if bad_groups:
            raise ValueError(f"num_groups={num_groups} must divide every width, got "
                             f"{bad_groups[0]}")
        levels = set(attention_levels)
        if any(not isinstance(i, int) or not 0 <= i < len(widths) for i in levels):
            raise ValueError(f"attention_levels must name levels in [0, {len(widths)}), got "
                             f"{list(attention_levels)!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.widths = tuple(widths)
        self.attention_levels = levels
        self.dim = dim
        self.downsample_factor = 2 ** (len(widths) - 1)
        self.make_norm: NormFactory = functools.partial(_group_norm, num_groups=num_groups,
                                                        eps=float(eps))

    def encode_path(self, x: Tensor, middle: nn.Module) -> Tensor:
        """An encoder's way from image to ``conv_out`` (VQGAN's and MAGVIT-v2's alike): the
        checked image through ``conv_in``, the levels, ``middle``, the last norm, SiLU and
        ``conv_out``."""
        check_feature_map(x, self.in_channels, self.downsample_factor, "image")
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(middle(h)), inplace=reuse_buffers()))


def _group_norm(channels: int, num_groups: int, eps: float) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups, channels, eps=eps)


@register
class VQGANEncoder(VQGANNet):
    """Image ``(B, in_channels, H, W)`` -> ``(B, dim, H / f, W / f)``, f = 2^(levels - 1).

    Args:
        in_channels: image channels.
        channels: width of the first convolution (taming's ``ch``).
        widths: width of each level, highest resolution first (``ch * ch_mult[i]``;
            diffusers' ``block_out_channels``).
        num_res_blocks: residual blocks per level.
        attention_levels: levels (0 = full resolution) with self-attention after each
            residual block (taming: the levels whose resolution is in ``attn_resolutions``).
        mid_attention: self-attention in the middle stage.
        z_channels: width of the encoder's last convolution.
        dim: width of ``quant_conv``'s output, the codebook's dim.
        num_groups: GroupNorm groups, which must divide every width.
        eps: GroupNorm epsilon.
    """

    def __init__(self, in_channels: int = 3, channels: int = 128,
                 widths: Sequence[int] = (128, 128, 256, 256, 512), num_res_blocks: int = 2,
                 attention_levels: Sequence[int] = (4,), mid_attention: bool = True,
                 z_channels: int = 256, dim: int = 256, num_groups: int = 32,
                 eps: float = 1e-6) -> None:
        super().__init__(widths, num_res_blocks, attention_levels, z_channels, dim, num_groups,
                         eps, extra_widths=(channels,))
        check_positive(in_channels=in_channels)
        self.in_channels = in_channels
        norm = self.make_norm
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        width = channels
        for level, level_width in enumerate(self.widths):
            last = level == len(self.widths) - 1
            self.down.append(Level(
                [width] + [level_width] * (num_res_blocks - 1), level_width,
                level in self.attention_levels, norm,
                None if last else CornerPadDownsample(level_width), "downsample"))
            width = level_width
        self.mid = _Middle(width, mid_attention, norm)
        self.norm_out = norm(width)
        self.conv_out = nn.Conv2d(width, z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(z_channels, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encode_path(x, self.mid))


@register
class VQGANDecoder(VQGANNet):
    """``(B, dim, h, w)`` -> image ``(B, out_channels, h * f, w * f)``; the output is not
    squashed (images live in [-1, 1]).

    Args: as :class:`VQGANEncoder` (``widths`` still highest resolution first; the
    decoder runs them from the last), with ``out_channels`` the image channels. Each level
    holds ``num_res_blocks + 1`` residual blocks.
    """

    def __init__(self, out_channels: int = 3, widths: Sequence[int] = (128, 128, 256, 256, 512),
                 num_res_blocks: int = 2, attention_levels: Sequence[int] = (4,),
                 mid_attention: bool = True, z_channels: int = 256, dim: int = 256,
                 num_groups: int = 32, eps: float = 1e-6) -> None:
        super().__init__(widths, num_res_blocks, attention_levels, z_channels, dim, num_groups,
                         eps, extra_widths=())
        check_positive(out_channels=out_channels)
        self.out_channels = out_channels
        norm = self.make_norm
        self.post_quant_conv = nn.Conv2d(dim, z_channels, 1)
        width = self.widths[-1]
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = _Middle(width, mid_attention, norm)
        up: list[nn.Module] = []
        for level in reversed(range(len(self.widths))):
            level_width = self.widths[level]
            up.append(Level([width] + [level_width] * num_res_blocks, level_width,
                             level in self.attention_levels, norm,
                             None if level == 0 else Upsample(level_width), "upsample"))
            width = level_width
        self.up = nn.ModuleList(reversed(up))  # indexed by level, run from the last
        self.norm_out = norm(width)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    @property
    def last_layer(self) -> nn.Parameter:
        """The weight of the output convolution (VQGAN's adaptive GAN weight, Esser et al.
        2021, eq. 7)."""
        return self.conv_out.weight

    def forward(self, z: Tensor) -> Tensor:
        check_feature_map(z, self.dim, 1, "feature map")
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=reuse_buffers()))
