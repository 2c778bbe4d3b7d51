"""Fashion-MNIST (Xiao, Rasul and Vollgraf 2017; Zalando Research, MIT licence).

70,000 grey 28x28 product photos in 10 classes, stored as four IDX files. The dataset
reads them from a folder (gzipped or not); :func:`download` fetches them when a network
is available. No machine this project runs on has one, so the error messages say where to
put the files by hand.
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vqtok.atomic import atomic_write
from vqtok.data.idx import read_idx

log = logging.getLogger(__name__)

BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
"""Where the Fashion-MNIST README says the official files live."""

FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""Split -> (images, labels) file names without the optional ``.gz``."""

CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


class DownloadError(OSError):
    """A file could not be fetched; the message says where to put it by hand."""


def _all_names() -> list[str]:
    return [f"{name}.gz" for pair in FILES.values() for name in pair]


def find_file(root: Path, name: str) -> Path | None:
    """``root/name.gz`` or ``root/name``, whichever exists (gzip first)."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    return None


class FashionMNIST(Dataset):
    """Fashion-MNIST as ``(image, label)`` pairs.

    ``image`` is float32 ``(1, pad_to, pad_to)`` in [-1, 1] (pixel / 127.5 - 1), the 28x28
    photo centred on a black (-1) border; ``label`` is an int in [0, 10), see ``CLASSES``.

    Args:
        root: folder holding ``train-images-idx3-ubyte(.gz)``, ``train-labels-idx1-ubyte(.gz)``,
            ``t10k-images-idx3-ubyte(.gz)`` and ``t10k-labels-idx1-ubyte(.gz)``.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        pad_to: side after zero padding (32 makes the size a multiple of 4, 8, 16 and 32);
            ``None`` keeps 28x28.
    """

    CLASSES = CLASSES
    in_channels = 1

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 pad_to: int | None = 32) -> None:
        if split not in FILES:
            raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
        self.root = Path(root)
        self.split = split
        paths = [find_file(self.root, name) for name in FILES[split]]
        if any(p is None for p in paths):
            missing = [n for n, p in zip(FILES[split], paths) if p is None]
            raise FileNotFoundError(
                f"Fashion-MNIST {split} files {missing} (gzipped or not) not found in "
                f"{self.root.resolve()}. Put the four official files {_all_names()} in that "
                f"folder (from {BASE_URL}), or call "
                f"vqtok.data.download_fashion_mnist({str(root)!r}) on a machine with a network."
            )
        image_path, label_path = paths
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"{image_path}: expected uint8 images of shape (N, H, W), got "
                             f"{images.dtype} of shape {images.shape}")
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise ValueError(f"{label_path}: expected uint8 labels of shape (N,), got "
                             f"{labels.dtype} of shape {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{image_path} holds {len(images)} images but {label_path} holds "
                             f"{len(labels)} labels")
        if len(labels) and labels.max() >= len(CLASSES):
            raise ValueError(f"{label_path}: labels must lie in [0, {len(CLASSES)}), got a "
                             f"maximum of {int(labels.max())}")
        self.images = torch.from_numpy(pad_images(images, pad_to))  # (N, S, S) uint8
        self.labels = torch.from_numpy(labels.astype(np.int64))  # (N,)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index].unsqueeze(0).float() / 127.5 - 1.0  # (1, S, S)
        return image, int(self.labels[index])

    @staticmethod
    def download(root: str | os.PathLike, base_url: str = BASE_URL,
                 timeout: float = 60.0) -> Path:
        """See :func:`download`."""
        return download(root, base_url=base_url, timeout=timeout)


def pad_images(images: np.ndarray, pad_to: int | None) -> np.ndarray:
    """Zero-pad ``(N, H, W)`` uint8 images to ``(N, pad_to, pad_to)``, centred (an odd
    margin puts the extra row/column at the bottom/right)."""
    if pad_to is None:
        return np.ascontiguousarray(images)
    height, width = images.shape[1:]
    if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < max(height, width):
        raise ValueError(f"pad_to must be an int >= the image side {max(height, width)} "
                         f"(or None), got {pad_to!r}")
    top, left = (pad_to - height) // 2, (pad_to - width) // 2
    padded = np.zeros((len(images), pad_to, pad_to), dtype=np.uint8)
    padded[:, top:top + height, left:left + width] = images
    return padded


def download(root: str | os.PathLike, base_url: str = BASE_URL, timeout: float = 60.0) -> Path:
    """Fetch the four official gzipped IDX files into ``root`` (files present are kept).

    Each file is written to a temporary name in ``root``, checked to parse as IDX, then
    renamed into place, so an interrupted download never leaves a half-written file.
    Raises :class:`DownloadError` (an ``OSError``) that says where to put the files by
    hand when a file cannot be fetched. Returns ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name in (name for pair in FILES.values() for name in pair):
        if find_file(root, name) is not None:
            continue
        url = f"{base_url.rstrip('/')}/{name}.gz"
        target = root / f"{name}.gz"
        def fetch(out, url=url):
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out)
            out.flush()
            read_idx(Path(out.name))  # reject an HTML error page or a cut-off transfer

        try:
            log.info("downloading %s to %s", url, target)
            atomic_write(target, fetch)
        except (OSError, ValueError) as err:  # URLError, HTTPError, timeouts are OSErrors
            raise DownloadError(
                f"could not download {url}: {err}. Without network access, fetch the four "
                f"files {_all_names()} from {base_url} on another machine and copy them "
                f"(gzipped or not) into {root.resolve()}"
            ) from err
    return root
