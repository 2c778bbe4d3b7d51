"""Pixels as a model sees them: the normalisation between 8-bit pixels and a model's
input, the split of a batch into images, and the padding up to a multiple of the
downsampling factor.

Files and PIL images become 8-bit pixels in :mod:`vqtok.formats.images`
(:func:`~vqtok.formats.images.to_uint8_pixels`); a model then sees
``x = (pixels / 255 - mean) / std`` (:class:`Normalization`). The default
``mean = std = 0.5`` maps pixels to [-1, 1]. The datasets, the tokenizers and the report
all use these, and a tokenizer directory records the normalisation it was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from vqtok.formats import tokenizer_dir


@dataclass(frozen=True)
class Normalization:
    """``x = (pixels / 255 - mean) / std`` between uint8 pixels and a model's input."""

    mean: float = 0.5
    std: float = 0.5

    def __post_init__(self) -> None:
        if not (np.isfinite(self.mean) and np.isfinite(self.std) and self.std > 0):
            raise ValueError(f"normalisation needs a finite mean and std > 0, got mean "
                             f"{self.mean!r}, std {self.std!r}")

    def to_model(self, pixels: Tensor) -> Tensor:
        """uint8 pixels (any shape) -> float32 model input."""
        return (pixels.float() / 255.0 - self.mean) / self.std

    def to_uint8(self, x: Tensor) -> Tensor:
        """Model-space values -> uint8 pixels on the CPU: ``round((x * std + mean) * 255)``
        clamped to 0..255."""
        pixels = (x.float() * self.std + self.mean) * 255
        return pixels.round().clamp(0, 255).to("cpu", torch.uint8)

    def convert(self, x: Tensor, target: Normalization) -> Tensor:
        """Model-space values under this normalisation -> the same pixels under ``target``
        (unrounded)."""
        return ((x.float() * self.std + self.mean) - target.mean) / target.std

    def bounds(self) -> tuple[float, float]:
        """The model-space values of pixels 0 and 255."""
        return (0.0 - self.mean) / self.std, (1.0 - self.mean) / self.std

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_NORMALIZATION = Normalization(**tokenizer_dir.DEFAULT_NORMALIZATION)
"""Pixels to [-1, 1], what every vqtok dataset yields."""


ImageLike = Image.Image | np.ndarray | Tensor
"""One image: a PIL image, a numpy array or a tensor (see vqtok.tokenizers.image)."""
Images = ImageLike | Sequence[ImageLike]
"""One image, a batch array/tensor, or a list of images."""


def split_images(images: Images) -> list[ImageLike]:
    """One item per image: batches ``(B, H, W, C)`` arrays and ``(B, C, H, W)`` tensors
    are split; a list or tuple is taken item by item."""
    if isinstance(images, (list, tuple)):
        items: list[ImageLike] = []
        for item in images:
            if isinstance(item, (list, tuple)):
                raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
                    "expected a flat list of images, got a nested list")
            items += split_images(item)
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        items = list(images)
    elif isinstance(images, Tensor) and images.ndim == 4:
        items = list(images.unbind(0))
    elif isinstance(images, (Image.Image, np.ndarray, Tensor)):
        items = [images]
    else:
        raise ValueError(f"expected PIL images, numpy arrays or tensors, got "
                         f"{type(images).__name__}")
    if not items:
        raise ValueError("got no images")
    return items


def replicate_pad(x: Tensor, height: int, width: int) -> Tensor:
    """``(C, H, W)`` -> ``(C, height, width)`` by replicating the bottom row and right column."""
    pad = (0, width - x.shape[2], 0, height - x.shape[1])  # (left, right, top, bottom)
    if pad == (0, 0, 0, 0):
        return x
    return F.pad(x[None], pad, mode="replicate")[0]
