"""LPIPS, the learned perceptual distance of Zhang et al. 2018 (VGG16 variant, v0.1).

The two images (in [-1, 1]) are shifted and scaled per channel, run through the
convolutional layers of VGG16 and compared at five taps (relu1_2, relu2_2, relu3_3,
relu4_3, relu5_3). At each tap the features are divided by their Euclidean norm over
channels at every position, the squared difference of the two normalised maps is weighed
per channel by a learned non-negative 1x1 linear head, averaged over positions, and the
five layer terms are summed (paper, eq. 1). docs/training.md#lpips says how to make the
weights file and how a training module should hold the network.

The network is a fixed function: its weights are non-persistent buffers, so they never
reach an optimizer, a ``state_dict`` or a checkpoint of a module that holds it, yet they
move with it (``.to(device)``); it stays in eval mode whatever its holder does. Gradients
flow to the input images (it is a loss).

Weights file: one safetensors file written by ``vqtok lpips convert``, with the metadata
``{"vqtok.format": "lpips-vgg16"}`` and the tensors named as below: the VGG16 convolutions
under torchvision's names for ``vgg16().features`` (``features.0.weight`` ...
``features.28.bias``) and the heads as ``heads.0.weight`` ... ``heads.4.weight``, each of
shape ``(1, C, 1, 1)``. Nothing here downloads anything.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from vqtok.models.frozen import check_weights

LPIPS_MARKER = "vqtok.format"  # the safetensors metadata key every vqtok weights file sets
LPIPS_FORMAT = "lpips-vgg16"
CONVERT_HINT = ("make it with `vqtok lpips convert --vgg vgg16-397923af.pth --heads vgg.pth "
                "--out FILE` (docs/training.md#lpips)")

# The input scaling of the lpips package (v0.1): x -> (x - SHIFT) / SCALE per RGB channel,
# which maps [-1, 1] inputs to about ImageNet-normalised values for VGG16.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)

# torchvision's vgg16().features: index -> (in, out) channels of each 3x3 convolution; a
# ReLU follows each at index + 1, 2x2 max-pooling sits at 4, 9, 16 and 23 (and 30, after
# the last tap, unused here).
VGG16_CONVS: dict[int, tuple[int, int]] = {
    0: (3, 64), 2: (64, 64),
    5: (64, 128), 7: (128, 128),
    10: (128, 256), 12: (256, 256), 14: (256, 256),
    17: (256, 512), 19: (512, 512), 21: (512, 512),
    24: (512, 512), 26: (512, 512), 28: (512, 512),
}
POOLS = (4, 9, 16, 23)
# The ReLUs whose outputs are compared: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
TAP_LAYERS = (3, 8, 15, 22, 29)
TAP_CHANNELS = (64, 128, 256, 512, 512)
EPS = 1e-10  # added to the channel norm, as in the lpips package
MIN_SIDE = 16  # relu5_3 sees the input at 1/16 of its size: smaller images leave it empty


def lpips_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of the weights file, by name, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for index, (c_in, c_out) in VGG16_CONVS.items():
        shapes[f"features.{index}.weight"] = (c_out, c_in, 3, 3)
        shapes[f"features.{index}.bias"] = (c_out,)
    for i, channels in enumerate(TAP_CHANNELS):
        shapes[f"heads.{i}.weight"] = (1, channels, 1, 1)
    return shapes


def check_lpips_weights(tensors: Mapping[str, Tensor], where: str) -> None:
    """Raise a one-line ValueError, naming ``where``, unless ``tensors`` holds exactly the
    LPIPS tensors with their shapes, finite floating-point values and non-negative heads."""
    check_weights(lpips_shapes(), tensors, where, "LPIPS (VGG16)")
    for name in lpips_shapes():
        if name.startswith("heads.") and bool((tensors[name] < 0).any()):
            raise ValueError(f"{where}: {name} has negative weights; LPIPS heads are "
                             f"non-negative")


class _Frozen(nn.Module):
    """A convolution's weights (and bias) as non-persistent buffers (module doc)."""

    def __init__(self, *shapes: tuple[int, ...]) -> None:
        super().__init__()
        for name, shape in zip(("weight", "bias"), shapes):
            self.register_buffer(name, torch.zeros(shape), persistent=False)


class LPIPS(nn.Module):
    """The LPIPS distance between two batches of images (module doc).

    Args:
        weights: every tensor of :func:`lpips_shapes`, by name (what the weights file holds);
            checked by :func:`check_lpips_weights`. Use :meth:`from_file` for the file.

    ``lpips(x, y)`` takes two ``(B, 3, H, W)`` batches in [-1, 1] (vqtok's pixel range for
    RGB) with H and W at least 16, and returns the ``(B,)`` distances, differentiable with
    respect to both. Identical images are at distance 0.
    """

    def __init__(self, weights: Mapping[str, Tensor]) -> None:
        super().__init__()
        check_lpips_weights(weights, "LPIPS weights")
        self.features = nn.ModuleDict({
            str(i): _Frozen((c_out, c_in, 3, 3), (c_out,))
            for i, (c_in, c_out) in VGG16_CONVS.items()
        })
        self.heads = nn.ModuleList(_Frozen((1, c, 1, 1)) for c in TAP_CHANNELS)
        with torch.no_grad():
            for name, buffer in self.named_buffers():
                if name in weights:
                    buffer.copy_(weights[name])
        super().train(False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> LPIPS:
        """The network with the weights of the file ``path`` written by ``vqtok lpips
        convert``; a missing, foreign or mis-shaped file raises a one-line ValueError that
        says how to make one."""
        path = Path(path)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise ValueError(f"LPIPS weights file {path} {what}; {CONVERT_HINT}")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                marker = (f.metadata() or {}).get(LPIPS_MARKER)
                if marker != LPIPS_FORMAT:
                    raise ValueError(f"{path}: not an LPIPS weights file (safetensors metadata "
                                     f"{LPIPS_MARKER!r} is {marker!r}, expected "
                                     f"{LPIPS_FORMAT!r}); {CONVERT_HINT}")
                names = f.keys()
                tensors = {name: f.get_tensor(name) for name in names}
        except (SafetensorError, OSError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path}: not a readable safetensors file ({reason}); "
                             f"{CONVERT_HINT}") from err
        try:
            check_lpips_weights(tensors, str(path))
        except ValueError as err:
            raise ValueError(f"{err}; {CONVERT_HINT}") from None
        return cls(tensors)

    @classmethod
    def random(cls, seed: int = 0) -> LPIPS:
        """The network with random weights (He-normal convolutions, uniform [0, 1) heads):
        for tests and cost measurements only; it is not a perceptual distance."""
        g = torch.Generator().manual_seed(seed)
        weights = {}
        for name, shape in lpips_shapes().items():
            if name.startswith("heads."):
                weights[name] = torch.rand(shape, generator=g)
            elif name.endswith(".weight"):
                fan_in = shape[1] * shape[2] * shape[3]
                weights[name] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
            else:
                weights[name] = torch.randn(shape, generator=g) * 0.01
        return cls(weights)

    def weights(self) -> dict[str, Tensor]:
        """The tensors of the weights file, by name (detached views of the buffers)."""
        return {name: buffer.detach() for name, buffer in self.named_buffers()}

    def train(self, mode: bool = True) -> LPIPS:
        """Always eval: a holder's ``.train()`` leaves LPIPS as it is (module doc)."""
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``(B,)`` LPIPS distances between ``x`` and ``y``, each ``(B, 3, H, W)`` in [-1, 1]
        (float32, or float64 for a float64 network, whatever the precision of the layers)."""
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS compares two (B, 3, H, W) batches of the same shape, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        if min(x.shape[-2:]) < MIN_SIDE:
            raise ValueError(f"LPIPS needs images of at least {MIN_SIDE} x {MIN_SIDE} pixels "
                             f"(its last layer sees 1/16 of the size), got "
                             f"{tuple(x.shape[-2:])}")
        # An image that needs no gradient (the target of a reconstruction loss) goes through
        # the network without autograd: its backward pass would be thrown away.
        grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and x.requires_grad):
            taps_x = self._taps(x)
        with torch.set_grad_enabled(grad and y.requires_grad):
            taps_y = self._taps(y)
        total = x.new_zeros(x.shape[0], dtype=torch.promote_types(x.dtype, torch.float32))
        for tap, (a, b) in enumerate(zip(taps_x, taps_y)):
            total = total + self._layer_distance(a, b, tap)
        return total

    def _taps(self, x: Tensor) -> list[Tensor]:
        """The scaled input through VGG16, the outputs of the five tapped ReLUs."""
        # The constants are made in the input's dtype (not kept as float32 buffers), so a
        # float64 network computes in float64 throughout.
        shift = torch.tensor(SHIFT, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        scale = torch.tensor(SCALE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        h = (x - shift) / scale
        taps = []
        for index in range(TAP_LAYERS[-1] + 1):
            if index in VGG16_CONVS:
                conv = self.features[str(index)]
                h = F.conv2d(h, conv.weight, conv.bias, padding=1)
            elif index in POOLS:
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            else:  # a ReLU
                h = F.relu(h)
                if index in TAP_LAYERS:
                    taps.append(h)
        return taps

    def _layer_distance(self, a: Tensor, b: Tensor, tap: int) -> Tensor:
        """One layer's term: channel-unit features, squared difference, 1x1 head, mean over
        positions (paper, eq. 1)."""
        # At least float32 here: EPS is 0 in float16, and 0 / 0 would be NaN at a position
        # where every channel is 0. vector_norm's gradient at a zero vector is 0 (sqrt's
        # would be infinite).
        dtype = torch.promote_types(a.dtype, torch.float32)
        a, b = a.to(dtype), b.to(dtype)
        a = a / (torch.linalg.vector_norm(a, dim=1, keepdim=True) + EPS)
        b = b / (torch.linalg.vector_norm(b, dim=1, keepdim=True) + EPS)
        head = self.heads[tap].weight.to(dtype)
        weighted = F.conv2d((a - b).pow(2), head)  # (B, 1, h, w)
        return weighted.mean(dim=(1, 2, 3))
