"""Datasets of RGB photos: random patches of a few large photos, or a folder of images.

Both return ``(image, 0)`` with ``image`` float32 ``(3, H, W)``, normalised by
:data:`~vqtok.tokenizers.pixels.DEFAULT_NORMALIZATION` (pixels to [-1, 1]). Files become
pixels through :mod:`vqtok.formats.images`, the conversion ``ImageTokenizer`` uses too.
Images are decoded once at construction and kept in memory as uint8 (``3 * H * W`` bytes
each).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from vqtok.formats.images import (
    image_files,
    load_image,
    resize_center_crop,
    to_uint8_pixels,
)
from vqtok.formats.inputs import check_regular_file
from vqtok.metrics.colour import GREY_COLOURFULNESS, colourfulness
from vqtok.tokenizers.pixels import DEFAULT_NORMALIZATION
from vqtok.validation import check_positive

log = logging.getLogger(__name__)

PHOTOS_DIR = Path(__file__).resolve().parent / "photos"
"""The embedded photos: ``train/`` (15) and ``test/`` (2, held out); see PROVENANCE.md."""


def load_images(files: list[Path], size: int | None) -> tuple[list[Path], list[Tensor],
                                                             list[Path]]:
    """Decode each file to RGB (resized by
    :func:`~vqtok.formats.images.resize_center_crop` when ``size`` is given).

    Returns ``(loaded files, (3, H, W) uint8 tensors, skipped files)``; a file that fails
    to decode is logged with its path and the reason, not raised.
    """
    loaded, tensors, skipped = [], [], []
    for path in files:
        try:
            check_regular_file(path)  # a named pipe would block the read forever
            pixels = to_uint8_pixels(load_image(path, draft=size), channels=3)  # (H, W, 3)
            if size is not None:
                pixels = np.asarray(resize_center_crop(Image.fromarray(pixels), size))
            # a read-only array (PIL's) is copied first: torch warns on one it cannot write
            pixels = np.require(pixels, requirements="W")
            tensors.append(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())
            loaded.append(path)
        except Exception as err:  # noqa: BLE001 - any decoder failure skips the file
            log.warning("skipping unreadable image %s: %s", path, err)
            skipped.append(path)
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"skipped {len(skipped)} unreadable image(s): {shown}{more}",
                      stacklevel=3)
    return loaded, tensors, skipped


class ImageFolder(Dataset):
    """Every image under ``root`` (recursive), as ``(3, size, size)`` RGB in [-1, 1].

    Rule: a file is taken when its extension is a raster image format
    (:data:`~vqtok.formats.images.IMAGE_SUFFIXES`: ``.png``, ``.jpg``, ``.webp``, ``.bmp``,
    ``.tif``, ...) and no name on its path starts with a dot; it is converted to RGB
    pixels by :func:`~vqtok.formats.images.to_uint8_pixels`, scaled so the shorter side
    is ``size`` and centre-cropped to ``size x size``. Files that fail to decode are
    skipped, logged with their path and listed in :attr:`skipped`; a folder without one
    readable image raises ValueError.
    Labels are always 0. All images are decoded here and held in memory.
    """

    in_channels = 3
    normalization = DEFAULT_NORMALIZATION

    def __init__(self, root: str | os.PathLike, size: int = 64) -> None:
        check_positive(size=size)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root.resolve()} does not exist")
        self.size = size
        candidates = image_files(self.root)
        self.files, tensors, self.skipped = load_images(candidates, size)
        if not tensors:
            raise ValueError(
                f"no readable image in {self.root.resolve()}: {len(candidates)} file(s) with an "
                f"image extension, {len(self.skipped)} failed to decode"
            )
        self.images = torch.stack(tensors)  # (N, 3, size, size) uint8

    @property
    def image_size(self) -> int:
        return self.size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.normalization.to_model(self.images[index]), 0


class PhotoPatches(Dataset):
    """``num_patches`` square crops of a few photos, as ``(3, patch_size, patch_size)``.

    Photos come from ``root / split`` (``root`` defaults to the embedded set, whose
    ``train/`` and ``test/`` are disjoint; ``split=None`` reads ``root`` itself). Each crop
    picks a photo uniformly, then a position uniformly inside it.

    Args:
        root: folder of photos; ``None`` for :data:`PHOTOS_DIR`.
        split: subfolder to read, or ``None``.
        patch_size: side of each crop; photos smaller than it are skipped with a warning.
        num_patches: length of the dataset (crops per epoch).
        seed: fixes the deterministic crops.
        random_crops: draw a fresh crop (and a random horizontal flip) at every access,
            from the dataset's own generator (below); otherwise crop ``i`` is fixed by
            ``seed``. Defaults to ``split == "train"``.
        grey_weight: chance of drawing a grey photo (colourfulness below
            :data:`~vqtok.metrics.GREY_COLOURFULNESS`) relative to a colour one, for random
            crops: 1 picks every photo alike, 0 never picks a grey one. A set of mostly grey
            photos otherwise teaches a model that images have little colour.
        colour_augment: for random crops of colour photos, permute the R, G, B channels at
            random (one of the 6 orders) and scale each pixel's distance from its grey
            level by a factor drawn uniformly from [0.75, 1.5], so the model sees more
            hues and saturations than a few photos hold. Grey crops are left as they are.

    Random crops come from a generator seeded by ``seed``, the distributed rank and the
    DataLoader worker, so that the processes of a multi-process run and the workers of a
    loader draw different crops. Its state is the dataset's :meth:`state_dict`, which a
    stateful loader saves and restores: a resumed run draws the crops it would have drawn
    (docs/training.md#exact-resume).
    """

    in_channels = 3
    normalization = DEFAULT_NORMALIZATION

    def __init__(self, root: str | os.PathLike | None = None, split: str | None = "train",
                 patch_size: int = 64, num_patches: int = 1024, seed: int = 0,
                 random_crops: bool | None = None, grey_weight: float = 1.0,
                 colour_augment: bool = False) -> None:
        check_positive(patch_size=patch_size, num_patches=num_patches)
        if (isinstance(grey_weight, bool) or not isinstance(grey_weight, (int, float))
                or not 0.0 <= grey_weight < float("inf")):
            raise ValueError(f"grey_weight must be a number >= 0, got {grey_weight!r}")
        folder = Path(root) if root is not None else PHOTOS_DIR
        if split is not None:
            folder = folder / split
        if not folder.is_dir():
            raise FileNotFoundError(f"photo folder {folder.resolve()} does not exist")
        self.folder, self.patch_size, self.num_patches = folder, patch_size, num_patches
        self.random_crops = split == "train" if random_crops is None else bool(random_crops)

        files, photos, self.skipped = load_images(image_files(folder), size=None)
        small = [f for f, p in zip(files, photos) if min(p.shape[1:]) < patch_size]
        for path in small:
            log.warning("skipping %s: smaller than patch_size=%d", path, patch_size)
        if small:
            warnings.warn(f"skipped {len(small)} photo(s) smaller than patch_size={patch_size}: "
                          f"{', '.join(str(p) for p in small)}", stacklevel=2)
        keep = [i for i, f in enumerate(files) if f not in small]
        self.files = [files[i] for i in keep]
        self.photos = [photos[i] for i in keep]  # each (3, H, W) uint8
        self.skipped += small
        if not self.photos:
            raise ValueError(f"no readable photo of at least {patch_size}x{patch_size} pixels "
                             f"in {folder.resolve()}")
        self.grey = [colourfulness(p.numpy(), channel_axis=0) < GREY_COLOURFULNESS
                     for p in self.photos]
        if grey_weight == 0 and all(self.grey):
            raise ValueError(f"grey_weight=0 leaves no photo: every photo in "
                             f"{folder.resolve()} is grey")
        self.grey_weight, self.colour_augment = float(grey_weight), bool(colour_augment)
        # The chance of each photo for random crops; None draws uniformly (the default).
        self.weights = None if self.grey_weight == 1.0 else torch.tensor(
            [self.grey_weight if grey else 1.0 for grey in self.grey], dtype=torch.float64)
        self.crops = None if self.random_crops else self._fixed_crops(seed)
        self.seed = seed
        self._generator: torch.Generator | None = None

    @staticmethod
    def _rank() -> int:
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def _crop_generator(self, *extra: int) -> torch.Generator:
        """This process's generator of random crops (class doc), made at its first use."""
        if self._generator is None:
            worker = torch.utils.data.get_worker_info()
            entropy = [self.seed, self._rank(), 0 if worker is None else worker.id, *extra]
            seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)
            self._generator = torch.Generator().manual_seed(seed)
        return self._generator

    def __getstate__(self) -> dict:
        # A worker process makes its own generator (its own seed) rather than a copy of ours.
        return {**self.__dict__, "_generator": None}

    def state_dict(self) -> dict[str, Tensor | int]:
        """The random-crop generator's state and this process's rank (empty before the
        first random crop)."""
        if self._generator is None:
            return {}
        return {"generator": self._generator.get_state(), "rank": self._rank()}

    def load_state_dict(self, state: dict[str, Tensor | int]) -> None:
        if "generator" not in state:
            return
        if state.get("rank", 0) == self._rank():
            self._crop_generator().set_state(state["generator"])
            return
        # Another rank's state (a multi-process checkpoint holds rank 0's loader state):
        # continue from a stream of this rank's own, moved on by the saved position, so
        # ranks never draw the same crops (docs/training.md#exact-resume).
        self._generator = None
        self._crop_generator(int(state["generator"].sum()))

    def _fixed_crops(self, seed: int) -> np.ndarray:
        """``(num_patches, 3)`` rows of (photo, top, left), fixed by ``seed``."""
        rng = np.random.default_rng(seed)
        photo = rng.integers(len(self.photos), size=self.num_patches)
        heights = np.array([p.shape[1] for p in self.photos])[photo]
        widths = np.array([p.shape[2] for p in self.photos])[photo]
        top = rng.integers(heights - self.patch_size + 1)
        left = rng.integers(widths - self.patch_size + 1)
        return np.stack([photo, top, left], axis=1)

    @property
    def image_size(self) -> int:
        return self.patch_size

    def __len__(self) -> int:
        return self.num_patches

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not -self.num_patches <= index < self.num_patches:
            raise IndexError(f"index {index} out of range for {self.num_patches} patches")
        p = self.patch_size
        flip = False
        if self.crops is None:
            g = self._crop_generator()
            if self.weights is None:
                k = int(torch.randint(len(self.photos), (), generator=g))
            else:
                k = int(torch.multinomial(self.weights, 1, generator=g))
            photo = self.photos[k]
            top = int(torch.randint(photo.shape[1] - p + 1, (), generator=g))
            left = int(torch.randint(photo.shape[2] - p + 1, (), generator=g))
            flip = bool(torch.randint(2, (), generator=g))
        else:
            k, top, left = (int(v) for v in self.crops[index])
            photo = self.photos[k]
        patch = photo[:, top:top + p, left:left + p]  # (3, p, p)
        if flip:
            patch = patch.flip(-1)
        if self.crops is None and self.colour_augment and not self.grey[k]:
            patch = _augment_colour(patch, g)
        return self.normalization.to_model(patch), 0


def _augment_colour(patch: Tensor, g: torch.Generator) -> Tensor:
    """A ``(3, H, W)`` uint8 crop with its channels in a random order and its saturation
    (each pixel's distance from its grey level, the mean of R, G, B) scaled by a factor
    from [0.75, 1.5]; values clipped to 0-255."""
    patch = patch[torch.randperm(3, generator=g)].float()
    factor = 0.75 + 0.75 * float(torch.rand((), generator=g, dtype=torch.float64))
    grey = patch.mean(dim=0, keepdim=True)
    return (grey + factor * (patch - grey)).round_().clamp_(0, 255).to(torch.uint8)
