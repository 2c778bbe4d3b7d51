"""The FID Inception network: the 2015-12-05 TensorFlow Inception-v3 graph that FID is
defined with (Heusel et al. 2017), in plain torch, up to its 2,048 pooled features
(docs/eval.md#the-inception-network).

Architecture (Szegedy et al. 2016, "Rethinking the Inception architecture", fig. 5-7 and
table 1) as that graph has it, which differs from the later Inception-v3 of other
libraries in three places: the average pooling of the mixed blocks leaves the padding out
of its mean (TF's ``SAME`` average pooling), the last mixed block pools its fourth tower
with a 3 x 3 max pool instead of an average, and the classifier has 1,008 outputs.
Every convolution has no bias and is followed by batch normalisation (epsilon 0.001, TF's)
and a ReLU.

Input: uint8 RGB ``(B, 3, H, W)``, resized to 299 x 299 by TF1's bilinear resize
(:func:`resize_bilinear_tf1`), then mapped to [-1, 1] as ``(x - 128) / 128``.

Weights: the tensor names and shapes of the standard PyTorch port
(:func:`inception_shapes`; torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``,
the same weights as pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``), read and
checked by :mod:`vqtok.formats.inception_weights`. They are fixed: buffers, never
parameters, and the network stays in eval mode. Nothing here downloads anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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

INCEPTION_SIZE = 299
"""The side the network sees."""
INCEPTION_FEATURES = 2048
"""Features per image: the global average pool after the last mixed block."""
BN_EPS = 1e-3


def resize_bilinear_tf1(x: Tensor, size: int) -> Tensor:
    """``(B, C, H, W)`` float -> ``(B, C, size, size)`` as TensorFlow 1's
    ``tf.image.resize_bilinear(align_corners=False)`` computes it (its
    ``resize_bilinear_op.cc``): output index i reads the input at ``i * (in / out)`` in
    float32, without the half-pixel offset of later resizers, between the two nearest
    inputs (the last input repeated past the edge); columns are blended first, then rows.
    No antialiasing: when shrinking, inputs between the sampled ones are skipped."""

    def axis(n_in: int) -> tuple[Tensor, Tensor, Tensor]:
        scale = torch.tensor(n_in / size, dtype=torch.float32)
        where = torch.arange(size, dtype=torch.float32, device=x.device) * scale.to(x.device)
        low = where.floor().to(torch.int64)
        high = (low + 1).clamp(max=n_in - 1)
        return low, high, (where - low.to(torch.float32)).to(x.dtype)

    top, bottom, dy = axis(x.shape[-2])
    left, right, dx = axis(x.shape[-1])
    upper, lower = x[..., top, :], x[..., bottom, :]  # (B, C, size, W)
    upper = upper[..., left] + (upper[..., right] - upper[..., left]) * dx
    lower = lower[..., left] + (lower[..., right] - lower[..., left]) * dx
    return upper + (lower - upper) * dy[:, None]


# ---- the layers -----------------------------------------------------------------------

Kernel = int | tuple[int, int]


class ConvBN(nn.Module):
    """A bias-free convolution, frozen batch normalisation and a ReLU; the names of its
    tensors are those of the port: ``conv.weight``, ``bn.{weight,bias,running_mean,
    running_var}``."""

    def __init__(self, c_in: int, c_out: int, kernel: Kernel, stride: int = 1,
                 padding: Kernel = 0) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride, self.padding = stride, padding
        self.conv = Buffers(weight=(c_out, c_in, kh, kw))
        self.bn = batch_norm_buffers(c_out)

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.conv.weight, stride=self.stride, padding=self.padding)
        return F.relu(frozen_batch_norm(x, self.bn, BN_EPS))


# A mixed block is a list of towers whose outputs are concatenated along channels. A tower
# is a sequence of steps: a convolution ``(name, c_in, c_out, kernel, stride, padding)``,
# a pooling (one of POOLS), or a fork: a list of convolutions applied to the same input,
# concatenated.
Conv = tuple  # (name, c_in, c_out, kernel[, stride[, padding]])
Step = Conv | str | list

POOLS = {
    # TF's SAME average pooling: the mean over the window's pixels inside the image.
    "avg": lambda x: F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False),
    "max": lambda x: F.max_pool2d(x, 3, stride=1, padding=1),
    "max/2": lambda x: F.max_pool2d(x, 3, stride=2),
}


def _block_a(c: int, pool: int) -> list[list[Step]]:  # 35 x 35 (fig. 5)
    return [[("branch1x1", c, 64, 1)],
            [("branch5x5_1", c, 48, 1), ("branch5x5_2", 48, 64, 5, 1, 2)],
            [("branch3x3dbl_1", c, 64, 1), ("branch3x3dbl_2", 64, 96, 3, 1, 1),
             ("branch3x3dbl_3", 96, 96, 3, 1, 1)],
            ["avg", ("branch_pool", c, pool, 1)]]


def _block_b(c: int) -> list[list[Step]]:  # 35 -> 17
    return [[("branch3x3", c, 384, 3, 2)],
            [("branch3x3dbl_1", c, 64, 1), ("branch3x3dbl_2", 64, 96, 3, 1, 1),
             ("branch3x3dbl_3", 96, 96, 3, 2)],
            ["max/2"]]


def _block_c(c7: int) -> list[list[Step]]:  # 17 x 17, factorised 7 x 7 (fig. 6)
    row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
    return [[("branch1x1", 768, 192, 1)],
            [("branch7x7_1", 768, c7, 1), ("branch7x7_2", c7, c7, *row),
             ("branch7x7_3", c7, 192, *col)],
            [("branch7x7dbl_1", 768, c7, 1), ("branch7x7dbl_2", c7, c7, *col),
             ("branch7x7dbl_3", c7, c7, *row), ("branch7x7dbl_4", c7, c7, *col),
             ("branch7x7dbl_5", c7, 192, *row)],
            ["avg", ("branch_pool", 768, 192, 1)]]


def _block_d() -> list[list[Step]]:  # 17 -> 8
    return [[("branch3x3_1", 768, 192, 1), ("branch3x3_2", 192, 320, 3, 2)],
            [("branch7x7x3_1", 768, 192, 1), ("branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3)),
             ("branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0)), ("branch7x7x3_4", 192, 192, 3, 2)],
            ["max/2"]]


def _block_e(c: int, pool: str) -> list[list[Step]]:  # 8 x 8, split 3 x 3 (fig. 7)
    def split(name: str, c_in: int) -> list[Conv]:
        return [(f"{name}a", c_in, 384, (1, 3), 1, (0, 1)),
                (f"{name}b", c_in, 384, (3, 1), 1, (1, 0))]

    return [[("branch1x1", c, 320, 1)],
            [("branch3x3_1", c, 384, 1), split("branch3x3_2", 384)],
            [("branch3x3dbl_1", c, 448, 1), ("branch3x3dbl_2", 448, 384, 3, 1, 1),
             split("branch3x3dbl_3", 384)],
            [pool, ("branch_pool", c, 192, 1)]]


class Mixed(nn.Module):
    """One mixed block: its towers (comment above) side by side."""

    def __init__(self, towers: Sequence[Sequence[Step]]) -> None:
        super().__init__()
        self.towers = towers
        for tower in towers:
            for step in tower:
                for conv in (step if isinstance(step, list) else [step]):
                    if isinstance(conv, tuple):
                        name, *args = conv
                        self.add_module(name, ConvBN(*args))

    def forward(self, x: Tensor) -> Tensor:
        outputs = []
        for tower in self.towers:
            h = x
            for step in tower:
                if isinstance(step, str):
                    h = POOLS[step](h)
                elif isinstance(step, list):
                    h = torch.cat([getattr(self, conv[0])(h) for conv in step], dim=1)
                else:
                    h = getattr(self, step[0])(h)
            outputs.append(h)
        return torch.cat(outputs, dim=1)


class FIDInception(FixedNetwork):
    """uint8 images ``(B, 3, H, W)`` -> float32 features ``(B, 2048)`` (module doc).

    Args:
        weights: every tensor of :func:`inception_shapes` by name (``num_batches_tracked``
            entries are ignored), checked by :func:`check_inception_weights`. Use
            :func:`vqtok.formats.inception_weights.load_inception` for the weights file,
            which also verifies its checksum.
    """

    num_features = INCEPTION_FEATURES
    what = "FID Inception"

    def _layout(self) -> None:
        """The modules, with zero weights."""
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)  # 299 -> 149
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)  # -> 147
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)  # max pool -> 73
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)  # -> 71, max pool -> 35
        self.Mixed_5b = Mixed(_block_a(192, 32))  # (B, 256, 35, 35)
        self.Mixed_5c = Mixed(_block_a(256, 64))  # 288
        self.Mixed_5d = Mixed(_block_a(288, 64))  # 288
        self.Mixed_6a = Mixed(_block_b(288))  # (B, 768, 17, 17)
        self.Mixed_6b = Mixed(_block_c(128))
        self.Mixed_6c = Mixed(_block_c(160))
        self.Mixed_6d = Mixed(_block_c(160))
        self.Mixed_6e = Mixed(_block_c(192))
        self.Mixed_7a = Mixed(_block_d())  # (B, 1280, 8, 8)
        self.Mixed_7b = Mixed(_block_e(1280, "avg"))  # 2048
        self.Mixed_7c = Mixed(_block_e(2048, "max"))  # 2048: TF's graph max-pools here
        self.fc = Buffers(weight=(1008, INCEPTION_FEATURES), bias=(1008,))  # unused logits

    @classmethod
    def random(cls, seed: int = 0) -> FIDInception:
        """The network with random weights (He-normal convolutions, batch normalisation
        near the identity): for tests only; its features measure nothing."""
        return cls(random_inception_weights(seed))

    @torch.inference_mode()
    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the FID Inception network takes uint8 RGB images (B, 3, H, W), "
                             f"got {images.dtype} of shape {tuple(images.shape)}")
        x = resize_bilinear_tf1(images.to(self.fc.weight.device, torch.float32), INCEPTION_SIZE)
        x = (x - 128) / 128  # (B, 3, 299, 299) in [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)  # (B, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))  # (B, 2048)


def inception_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of the weights file, by name, with its shape (without the
    ``num_batches_tracked`` counters some files carry)."""
    return FIDInception.shapes()


def check_inception_weights(tensors: Mapping[str, Tensor], where: str) -> None:
    """Raise a one-line ValueError, naming ``where``, unless ``tensors`` holds exactly the
    FID Inception tensors with their shapes and finite values
    (:func:`vqtok.models.frozen.check_weights`)."""
    check_weights(FIDInception.shapes(), tensors, where, "FID Inception")


def random_inception_weights(seed: int = 0) -> dict[str, Tensor]:
    """Random tensors in the shapes of :func:`inception_shapes` (see
    :meth:`FIDInception.random`)."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in inception_shapes().items():
        if name.endswith("conv.weight"):
            fan_in = math.prod(shape[1:])
            weights[name] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif name.endswith(("bn.weight", "running_var")):
            weights[name] = 0.8 + 0.4 * torch.rand(shape, generator=g)
        else:  # biases and running means
            weights[name] = 0.05 * torch.randn(shape, generator=g)
    return weights
