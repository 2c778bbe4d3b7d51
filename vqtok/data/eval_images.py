"""The images ``vqtok eval`` measures a tokenizer on, preprocessed by one pinned rule
(docs/eval.md#preprocessing).

An image file becomes ``size x size`` pixels as ADM's evaluation data and LlamaGen's
reconstruction evaluation prepare ImageNet (Dhariwal and Nichol 2021, their
``center_crop_arr``): while the shorter side is at least twice ``size``, halve both sides
with a box filter (rounding down); then scale so the shorter side is ``size`` with
Pillow's bicubic filter (sides rounded to the nearest integer); then cut the central
``size x size`` square (offsets rounded down). An image whose shorter side is under
``size`` is refused rather than enlarged: upscaled pixels are not an image of the
data set. Pixels come from :func:`vqtok.formats.images.to_uint8_pixels` (alpha on white,
grey repeated to RGB), in the tokenizer's channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from vqtok.formats.images import load_image, to_uint8_pixels
from vqtok.formats.inputs import check_regular_file
from vqtok.validation import check_positive


class ImageTooSmallError(ValueError):
    """An image whose shorter side is under the evaluation size."""


def center_crop_adm(image: Image.Image, size: int) -> Image.Image:
    """``image`` as a ``size x size`` square by the rule of the module doc (box halvings,
    bicubic to the shorter side, centre crop). Raises :class:`ImageTooSmallError` for an
    image with a side under ``size``."""
    check_positive(size=size)
    if min(image.size) < size:
        raise ImageTooSmallError(f"{image.size[0]} x {image.size[1]} pixels, smaller than the "
                                 f"{size} x {size} crop (images are not enlarged)")
    while min(image.size) >= 2 * size:
        image = image.resize((image.size[0] // 2, image.size[1] // 2), Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)),
                         Image.Resampling.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


class EvalImages(Dataset):
    """Image files as ``(index, uint8 pixels (channels, size, size))``, or ``(index,
    reason)`` for a file that cannot be read or is smaller than the crop (the caller lists
    it and goes on).

    Args:
        files: the image paths, in the order the results are reported.
        size: the side of the square crop (module doc).
        channels: 3 (RGB) or 1 (grey), the tokenizer's.
    """

    def __init__(self, files: Sequence[Path], size: int, channels: int) -> None:
        check_positive(size=size)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.files, self.size, self.channels = list(files), size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, Tensor | str]:
        path = self.files[index]
        try:
            check_regular_file(path)
            return index, _square(load_image(path), self.size, self.channels)
        except Exception as err:  # noqa: BLE001 - any failure skips the file only
            return index, str(err).removeprefix(f"{path}: ") or type(err).__name__


class EvalDataModuleImages(Dataset):
    """The validation images of a vqtok DataModule (``vqtok eval --data CONFIG.yaml``) as
    :class:`EvalImages` gives files: ``(index, uint8 pixels (channels, size, size))``.

    Each image is the DataModule's tensor turned back into 8-bit pixels by its
    ``normalization``, then given the same crop as a file (module doc).

    Args:
        datamodule: a DataModule set up for validation, with ``normalization``.
        source: how the images are named in messages and results (``SOURCE#index``).
        size, channels: as for :class:`EvalImages`.

    Raises:
        ValueError: validation data that is a stream or clips, or images smaller than the
            crop (checked on the first image, so nothing is measured in vain).
    """

    def __init__(self, datamodule: Any, source: str, size: int, channels: int) -> None:
        check_positive(size=size)
        dataset, kind = datamodule.val_dataloader().dataset, type(datamodule).__name__
        sized = hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
        first = dataset[0][0] if sized and len(dataset) > 0 else None
        problem = (
            f"{kind}'s validation data is a stream; give the images as files, a folder or a "
            f"list file" if not sized else
            f"{kind} has no validation image" if first is None else
            f"{kind} gives clips; `vqtok eval` measures image tokenizers on images"
            if first.ndim != 3 else
            f"the validation images are {first.shape[-1]} x {first.shape[-2]} pixels, smaller "
            f"than --size {size} (images are not enlarged)" if min(first.shape[-2:]) < size
            else None)
        if problem is not None:
            raise ValueError(f"{source}: {problem}")
        self.dataset, self.normalization = dataset, datamodule.normalization
        self.size, self.channels = size, channels
        self.files = [f"{source}#{i}" for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Tensor | str]:
        x = self.dataset[index][0]  # (C, H, W) in the DataModule's normalisation
        pixels = self.normalization.to_uint8(x).permute(1, 2, 0).numpy()
        try:
            return index, _square(pixels[..., 0] if pixels.shape[-1] == 1 else pixels,
                                  self.size, self.channels)
        except Exception as err:  # noqa: BLE001 - any failure skips the image only
            return index, str(err) or type(err).__name__


def _square(image: Image.Image | np.ndarray, size: int, channels: int) -> Tensor:
    """uint8 ``(channels, size, size)``: ``image`` in the tokenizer's channels
    (:func:`~vqtok.formats.images.to_uint8_pixels`), then :func:`center_crop_adm`."""
    pixels = to_uint8_pixels(image, channels)  # (H, W, C)
    mode = "L" if channels == 1 else "RGB"
    square = center_crop_adm(Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode),
                             size)
    array = np.asarray(square, dtype=np.uint8).reshape(size, size, channels)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def collate_as_list(items: list) -> list:
    """A batch as the list of its items (failures and pixels side by side)."""
    return items
