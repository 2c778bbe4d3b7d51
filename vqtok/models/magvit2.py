"""The MAGVIT-v2 image encoder and decoder (Yu et al. 2023, "Language Model Beats Diffusion",
section 3.2) in the layout of Open-MAGVIT2 (Luo et al. 2024), so its released
weights load unchanged (docs/interop.md#seed-voken).

Where it differs from the VQGAN of :mod:`vqtok.models.vqgan`:

* residual blocks without biases, and no self-attention anywhere; ``num_res_blocks``
  residual blocks per level in both the encoder and the decoder, and as many in each
  middle stage (``mid_block``);
* the encoder's first convolution has no bias, its downsampling is a 3x3 convolution of
  stride 2 with one pixel of padding on every side, and it ends with a 1x1 convolution
  straight to the quantizer's ``z_channels`` (no ``quant_conv``);
* the decoder upsamples with a 3x3 convolution to four times the width followed by
  depth-to-space, and each of its levels starts with an adaptive group norm conditioned
  on the quantized latent (:class:`AdaptiveGroupNorm`).

The modules keep the published nesting (``down[i].block[j]``, ``down[i].downsample``,
``mid_block[j]``, ``adaptive[i]``, ``up[i].upsample.conv1``), so a converted state dict
differs from Open-MAGVIT2's only in the residual blocks' skip convolution (``skip`` here,
``nin_shortcut`` there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqtok.models.blocks import ResBlock, check_feature_map, reuse_buffers
from vqtok.models.vqgan import Level, VQGANNet
from vqtok.registry import register
from vqtok.validation import check_positive


class DepthToSpaceUpsample(nn.Module):
    """Double height and width: a 3x3 convolution from C to 4C channels, then channel
    ``(i * 2 + j) * C + c`` goes to channel c at position ``(2y + i, 2x + j)`` (the
    depth-column-row order, not ``pixel_shuffle``'s ``c * 4 + i * 2 + j``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.conv1(x), "b (i j c) h w -> b c (h i) (w j)", i=2, j=2)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm whose scale and shift come from the quantized latent z (MAGVIT-v2's
    decoder, Yu et al. 2023, section 3.2):

        out = GN(x) * gamma(sqrt(var(z) + eps)) + beta(mean(z)),

    with ``GN`` a group norm without affine parameters, ``mean`` and ``var`` each latent
    channel's over all positions (``var`` with Bessel's correction, dividing by P - 1 for
    P positions, as the released code's ``Tensor.var`` does), and ``gamma``, ``beta``
    linear maps from ``z_channels`` to the width of x. The statistics span the whole
    latent, so a latent needs at least two positions."""

    def __init__(self, z_channels: int, channels: int, num_groups: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels, eps=eps, affine=False)
        self.gamma = nn.Linear(z_channels, channels)
        self.beta = nn.Linear(z_channels, channels)
        self.eps = eps

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        flat = z.flatten(2)  # (B, z_channels, P)
        std = (flat.var(dim=2, correction=1) + self.eps).sqrt()  # (B, z_channels)
        scale = self.gamma(std)[:, :, None, None]  # (B, C, 1, 1)
        shift = self.beta(flat.mean(dim=2))[:, :, None, None]
        return self.norm(x) * scale + shift


@register
class MagvitEncoder(VQGANNet):
    """Image ``(B, in_channels, H, W)`` -> ``(B, z_channels, H / f, W / f)``,
    f = 2^(levels - 1).

    Args:
        in_channels: image channels.
        channels: width of the first convolution (Open-MAGVIT2's ``ch``).
        widths: width of each level, highest resolution first (``ch * ch_mult[i]``).
        num_res_blocks: residual blocks per level and in the middle stage.
        z_channels: width of the output, the quantizer's dim (18 for LFQ with 2^18 codes).
        num_groups: GroupNorm groups, which must divide every width.
        eps: GroupNorm epsilon.
    """

    def __init__(self, in_channels: int = 3, channels: int = 128,
                 widths: Sequence[int] = (128, 128, 256, 256, 512), num_res_blocks: int = 4,
                 z_channels: int = 18, num_groups: int = 32, eps: float = 1e-6) -> None:
        super().__init__(widths, num_res_blocks, (), z_channels, z_channels, num_groups, eps,
                         extra_widths=(channels,))
        check_positive(in_channels=in_channels)
        self.in_channels = in_channels
        norm = self.make_norm
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        width = channels
        for level, level_width in enumerate(self.widths):
            last = level == len(self.widths) - 1
            downsample = None if last else nn.Conv2d(level_width, level_width, 3, stride=2,
                                                     padding=1)
            self.down.append(Level([width] + [level_width] * (num_res_blocks - 1), level_width,
                                   False, norm, downsample, "downsample", bias=False))
            width = level_width
        self.mid_block = nn.Sequential(*(ResBlock(width, width, norm, bias=False)
                                         for _ in range(num_res_blocks)))
        self.norm_out = norm(width)
        self.conv_out = nn.Conv2d(width, z_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.encode_path(x, self.mid_block)


@register
class MagvitDecoder(VQGANNet):
    """``(B, z_channels, h, w)`` -> image ``(B, out_channels, h * f, w * f)``, h * w >= 2;
    the output is not squashed (images live in [-1, 1]).

    Args: as :class:`MagvitEncoder` (``widths`` still highest resolution first; the
    decoder runs them from the last), with ``out_channels`` the image channels.
    """

    def __init__(self, out_channels: int = 3, widths: Sequence[int] = (128, 128, 256, 256, 512),
                 num_res_blocks: int = 4, z_channels: int = 18, num_groups: int = 32,
                 eps: float = 1e-6) -> None:
        super().__init__(widths, num_res_blocks, (), z_channels, z_channels, num_groups, eps,
                         extra_widths=())
        check_positive(out_channels=out_channels)
        self.out_channels = out_channels
        norm = self.make_norm
        width = self.widths[-1]
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid_block = nn.Sequential(*(ResBlock(width, width, norm, bias=False)
                                         for _ in range(num_res_blocks)))
        adaptive: list[nn.Module] = []
        up: list[nn.Module] = []
        for level in reversed(range(len(self.widths))):
            level_width = self.widths[level]
            adaptive.append(AdaptiveGroupNorm(z_channels, width, num_groups, float(eps)))
            up.append(Level([width] + [level_width] * (num_res_blocks - 1), level_width, False,
                            norm, None if level == 0 else DepthToSpaceUpsample(level_width),
                            "upsample", bias=False))
            width = level_width
        # both indexed by level and run from the last
        self.adaptive = nn.ModuleList(reversed(adaptive))
        self.up = nn.ModuleList(reversed(up))
        self.norm_out = norm(width)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    @property
    def last_layer(self) -> nn.Parameter:
        """The weight of the output convolution (the adaptive GAN weight's layer)."""
        return self.conv_out.weight

    def forward(self, z: Tensor) -> Tensor:
        check_feature_map(z, self.dim, 1, "feature map")
        if z.shape[2] * z.shape[3] < 2:
            raise ValueError(f"the MAGVIT-v2 decoder needs a latent of at least 2 positions "
                             f"(its adaptive norm takes their variance), got shape "
                             f"{tuple(z.shape)}")
        h = self.conv_in(z)
        for block in self.mid_block:
            h = block(h)
        for level in reversed(range(len(self.up))):
            h = self.up[level](self.adaptive[level](h, z))
        return self.conv_out(F.silu(self.norm_out(h), inplace=reuse_buffers()))
