"""How far a convolutional encoder or decoder looks: the halo that tiled inference needs.

An output position of a stack of convolutions depends on the input inside a window around
it; the window's radius follows from the layers (docs/architecture.md#tiled-inference):
a ``k x k`` convolution of dilation ``d`` adds ``(k - 1) / 2 * d`` of its own input
positions, a stride ``s`` multiplies the spacing of later positions by ``s``, and a 2x
nearest-neighbour upsampling halves it. Per-position layers (:class:`ChannelNorm`, SiLU,
1x1 convolutions) add nothing. A layer whose output mixes every position (GroupNorm, whose
statistics span the image, and self-attention) has no finite window: such a model cannot
be run on tiles and give the whole-image result, and :func:`receptive_radius` says which
layer is to blame.
"""

from __future__ import annotations

from torch import nn

from vqtok.models.blocks import ChannelNorm, Downsample, ResBlock, SelfAttention, Upsample


class NotTileableError(ValueError):
    """A layer mixes all positions, so the model's output at a position is not local."""


def receptive_radius(module: nn.Module) -> float:
    """Radius of the window of inputs one output position depends on, in units of the
    module's input positions (pixels for an encoder, tokens for a decoder; fractions of a
    token after upsampling). Raises :class:`NotTileableError` naming a layer with no
    finite window (GroupNorm, self-attention, a layer this function does not know)."""
    radius, _ = _walk(module, 1.0)
    return radius


def _walk(module: nn.Module, spacing: float) -> tuple[float, float]:
    """``(radius added, spacing after)`` of ``module`` applied to positions ``spacing``
    input units apart."""
    if isinstance(module, nn.Sequential):
        total = 0.0
        for layer in module:
            radius, spacing = _walk(layer, spacing)
            total += radius
        return total, spacing
    if hasattr(module, "layers") and isinstance(module.layers, nn.Sequential):
        return _walk(module.layers, spacing)  # Encoder, Decoder
    if isinstance(module, nn.Conv2d):
        return _conv(module, spacing)
    if isinstance(module, Downsample):
        return _conv(module.conv, spacing)
    if isinstance(module, Upsample):  # nearest 2x, then a conv at half the spacing
        return _conv(module.conv, spacing / 2)
    if isinstance(module, ResBlock):
        main, after = _walk(nn.Sequential(module.norm1, module.conv1, module.norm2,
                                          module.conv2), spacing)
        skip, _ = _walk(module.skip, spacing)
        return max(main, skip), after
    if isinstance(module, (ChannelNorm, nn.SiLU, nn.Identity)):
        return 0.0, spacing
    if isinstance(module, nn.GroupNorm):
        raise NotTileableError("it has GroupNorm layers (norm: group), whose statistics "
                               "span the whole image")
    if isinstance(module, SelfAttention):
        raise NotTileableError("it has a self-attention block, which mixes all positions")
    for inner in module.modules():  # a composite this walk does not know (VQGAN's)
        if isinstance(inner, (nn.GroupNorm, SelfAttention)):
            return _walk(inner, spacing)
    raise NotTileableError(f"its layer {type(module).__name__} has no known receptive field")


def _conv(conv: nn.Conv2d, spacing: float) -> tuple[float, float]:
    (kh, kw), (dh, dw), (sh, sw) = conv.kernel_size, conv.dilation, conv.stride
    if (kh, dh, sh) != (kw, dw, sw) or conv.padding != ((kh - 1) // 2 * dh,) * 2 or (
            kh % 2 == 0 or conv.padding_mode != "zeros"):
        raise NotTileableError(f"its convolution {conv} is not a centred odd square kernel "
                               f"with zero padding")
    return (kh - 1) // 2 * dh * spacing, spacing * sh
