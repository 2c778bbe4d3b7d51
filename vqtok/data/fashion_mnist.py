"""Fashion-MNIST (Xiao, Rasul and Vollgraf 2017; Zalando Research, MIT licence).

70,000 grey 28x28 product photos in 10 classes, stored as four IDX files. The dataset
reads them from a folder (gzipped or not), by default the user cache
(:func:`vqtok.data.home.dataset_dir`), which :func:`fetch` fills: by download from the
official address (MD5 checked against the published sums) or by copy from a local folder
(``vqtok data fashion-mnist [--from DIR]``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vqtok.data.home import DATA_ENV, DatasetNotFoundError, dataset_dir
from vqtok.data.idx import read_idx
from vqtok.formats.atomic import atomic_directory
from vqtok.formats.outputs import check_new_output
from vqtok.tokenizers.pixels import DEFAULT_NORMALIZATION

log = logging.getLogger(__name__)

NAME = "fashion-mnist"
"""The data set's folder in the cache, and its name in ``vqtok data``."""

BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
"""Where the Fashion-MNIST README says the official files live."""

FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""Split -> (images, labels) file names without the optional ``.gz``."""

OFFICIAL_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
"""MD5 of the official gzipped files, as the Fashion-MNIST README publishes them."""

CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def default_root() -> Path:
    """The cache folder :class:`FashionMNIST` reads when no root is given."""
    return dataset_dir(NAME)


def not_found_message(root: Path, missing: list[str]) -> str:
    """One line: what is missing where, and the command that puts it there."""
    what = "Fashion-MNIST" if len(missing) == 4 else f"Fashion-MNIST files {missing}"
    hint = (f"run `vqtok data fashion-mnist` (download) or `vqtok data fashion-mnist --from "
            f"DIR` (copy), which fill {default_root()}" if root == default_root() else
            f"copy the four IDX files there (gzipped or not), or use the data cache "
            f"({default_root()}) that `vqtok data fashion-mnist` fills")
    return (f"{what} not found in {root.resolve()}; {hint} (the cache is ${DATA_ENV}, else the "
            f"platform cache directory)")


class FashionMNIST(Dataset):
    """Fashion-MNIST as ``(image, label)`` pairs.

    ``image`` is float32 ``(1, pad_to, pad_to)``, the 28x28 photo centred on a black
    border, normalised by :data:`~vqtok.tokenizers.pixels.DEFAULT_NORMALIZATION` (pixels to
    [-1, 1]); ``label`` is an int in [0, 10), see ``CLASSES``.

    Args:
        root: folder holding ``train-images-idx3-ubyte(.gz)``, ``train-labels-idx1-ubyte(.gz)``,
            ``t10k-images-idx3-ubyte(.gz)`` and ``t10k-labels-idx1-ubyte(.gz)``; ``None``:
            the user cache (:func:`default_root`).
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        pad_to: side after zero padding (32 makes the size a multiple of 4, 8, 16 and 32);
            ``None`` keeps 28x28.

    Raises :class:`~vqtok.data.home.DatasetNotFoundError` (a FileNotFoundError) with the
    command that fetches the files when they are missing.
    """

    CLASSES = CLASSES
    in_channels = 1
    normalization = DEFAULT_NORMALIZATION

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 pad_to: int | None = 32) -> None:
        if split not in FILES:
            raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
        self.root = default_root() if root is None else Path(root)
        self.split = split
        image_path, label_path = check_files(self.root, (split,))
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
        image = self.normalization.to_model(self.images[index].unsqueeze(0))  # (1, S, S)
        return image, int(self.labels[index])


def find_file(root: Path, name: str) -> Path | None:
    """``root/name.gz`` or ``root/name``, whichever exists (gzip first)."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    return None


def check_files(root: Path, splits: tuple[str, ...] = ("train", "test")) -> list[Path]:
    """The IDX files of ``splits`` in ``root`` (images then labels per split); raises
    :class:`~vqtok.data.home.DatasetNotFoundError` naming the missing ones."""
    names = [name for split in splits for name in FILES[split]]
    paths = [find_file(root, name) for name in names]
    missing = [n for n, p in zip(names, paths) if p is None]
    if missing:
        raise DatasetNotFoundError(not_found_message(root, missing))
    return paths  # type: ignore[return-value]


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


# ---- filling the cache ------------------------------------------------------------------


class DownloadError(OSError):
    """A file could not be fetched; the message says where to put it by hand."""


def _gz_names() -> list[str]:
    return [f"{name}.gz" for pair in FILES.values() for name in pair]


def _copy_stream(source: BinaryIO, out: BinaryIO, total: int | None, label: str,
                 progress: bool) -> tuple[str, str]:
    """Copy ``source`` into ``out`` in chunks with a progress bar; returns the data's
    ``(md5, sha256)`` hex digests."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not progress,
              leave=False) as bar:
        while chunk := source.read(1 << 20):
            out.write(chunk)
            md5.update(chunk)
            sha256.update(chunk)
            bar.update(len(chunk))
    return md5.hexdigest(), sha256.hexdigest()


def _check_idx(path: Path, name: str, source: str) -> int:
    """Reject a file that is not the IDX array its name promises (28 x 28 uint8 images, or
    labels in [0, 10)); errors name ``source``, the user's file or URL the file came from.
    Returns the number of images or labels."""
    array = read_idx(path, source)
    images = "images" in name
    ok = array.dtype == np.uint8 and (array.ndim == 3 and array.shape[1:] == (28, 28) if images
                                      else array.ndim == 1 and (array.size == 0 or array.max()
                                                                < len(CLASSES)))
    if not ok:
        raise ValueError(f"{source}: not Fashion-MNIST {'images' if images else 'labels'} "
                         f"(got {array.dtype} of shape {array.shape})")
    return len(array)


def _cache_entries() -> set[str]:
    """The names a filled folder may hold: the four files, gzipped or not."""
    return {f"{n}{gz}" for pair in FILES.values() for n in pair for gz in ("", ".gz")}


def _fill(root: Path, stage: Callable[[Path], dict[str, tuple[str, int]]]) -> None:
    """Fill ``root`` all at once: ``stage(folder)`` writes the four files into an empty
    staging folder beside ``root``, checking each, and returns ``{file name: (the user's
    file or URL it came from, its count of images or labels)}``; the counts of each
    split's images and labels must agree; only then does the staging folder replace
    ``root`` in one rename (:func:`~vqtok.formats.atomic.atomic_directory`). On any
    failure, or if the process is killed, ``root`` is as it was: a previous good copy
    stays whole. ``root`` may hold only Fashion-MNIST files, as it is replaced whole."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder; give another --root")
    if root.is_dir():
        allowed = _cache_entries()
        foreign = sorted(p.name for p in root.iterdir() if p.name not in allowed
                         and not (p.name.startswith(".") and ".tmp-" in p.name))
        if foreign:
            raise ValueError(f"{root} holds files that are not Fashion-MNIST's {foreign[:5]}; "
                             f"vqtok data replaces that folder as a whole, so give --root an "
                             f"empty or new folder")
    root.mkdir(parents=True, exist_ok=True)
    with atomic_directory(Path(os.path.realpath(root))) as staging:
        found = stage(staging)
        for split, (image_name, label_name) in FILES.items():
            (images, n), (labels, m) = (next(v for k, v in found.items()
                                             if k.removesuffix(".gz") == name)
                                        for name in (image_name, label_name))
            if n != m:
                raise ValueError(f"{images} holds {n:,} {split} images but {labels} holds "
                                 f"{m:,} labels; the two files of a split must belong "
                                 f"together")


def download(root: str | os.PathLike | None = None, base_url: str = BASE_URL,
             timeout: float = 60.0, checksums: dict[str, str] | None = OFFICIAL_MD5,
             progress: bool = False) -> Path:
    """Fetch the four gzipped IDX files into ``root`` (default: the cache); files already
    there are kept, and nothing is fetched when all four are.

    Each file is downloaded into a staging folder and checked (its MD5 against
    ``checksums``, the published sums by default, then that it parses as IDX); the
    images and labels of each split must be as many; only then does the folder replace
    ``root`` in one rename, so an interrupted or corrupted download changes nothing
    (:func:`_fill`). Raises :class:`DownloadError` (an ``OSError``) that says where to
    put the files by hand. Returns ``root``.
    """
    root = default_root() if root is None else Path(root)
    names = [name for pair in FILES.values() for name in pair]
    kept = {name: find_file(root, name) for name in names}
    if all(kept.values()):
        return root

    def stage(folder: Path) -> dict[str, tuple[str, int]]:
        found = {}
        for name in names:
            if kept[name] is not None:
                path = kept[name]
                shutil.copyfile(path, folder / path.name)
                found[path.name] = (str(path), _check_idx(folder / path.name, name, str(path)))
                continue
            gz = f"{name}.gz"
            url = f"{base_url.rstrip('/')}/{gz}"
            try:
                log.info("downloading %s to %s", url, root)
                with urllib.request.urlopen(url, timeout=timeout) as resp, \
                        open(folder / gz, "xb") as out:
                    length = resp.headers.get("Content-Length")
                    md5, _ = _copy_stream(resp, out, int(length) if length else None, gz,
                                          progress)
                expected = (checksums or {}).get(gz)
                if expected is not None and md5 != expected:
                    raise ValueError(f"MD5 {md5} of the downloaded {gz} is not the published "
                                     f"{expected}")
                # an HTML error page or a cut-off transfer
                found[gz] = (url, _check_idx(folder / gz, gz, url))
            except (OSError, ValueError) as err:  # URLError, HTTPError, timeouts are OSErrors
                raise DownloadError(
                    f"could not download {url}: {err}. Without network access, fetch the four "
                    f"files {_gz_names()} from {base_url} on another machine and copy them in "
                    f"with `vqtok data fashion-mnist --from DIR` (or by hand, gzipped or not, "
                    f"into {root.resolve()})"
                ) from err
        return found

    _fill(root, stage)
    return root


def copy_from(source: str | os.PathLike, root: str | os.PathLike | None = None,
              progress: bool = False) -> tuple[Path, list[str]]:
    """Copy the four IDX files (gzipped or not) from the folder ``source`` into ``root``
    (default: the cache), replacing what was there.

    Each copy is verified: its SHA-256 equals the source's and it parses as the IDX array
    its name promises; the images and labels of each split must be as many. Only then do
    the four replace ``root``'s files, in one rename, so a failure changes nothing
    (:func:`_fill`); errors name the file in ``source``. ``root`` may not be, lie inside or
    hold ``source``. Returns ``(root, notes)``: the notes say which files are the official
    release (MD5 as published) and which are other data in the same layout (a re-split,
    say), used as given.
    """
    source = Path(source)
    if not source.is_dir():
        raise DatasetNotFoundError(f"--from {source}: not a folder")
    names = [name for pair in FILES.values() for name in pair]
    files = [find_file(source, name) for name in names]
    missing = [name for name, path in zip(names, files) if path is None]
    if missing:
        raise DatasetNotFoundError(f"--from {source}: missing {missing} (gzipped or not); the "
                                   f"folder must hold the four Fashion-MNIST IDX files")
    root = default_root() if root is None else Path(root)
    check_new_output(root, inputs=[source, *files], overwrite=True, folder=True)
    notes = []

    def stage(folder: Path) -> dict[str, tuple[str, int]]:
        found = {}
        for name, path in zip(names, files):
            with open(path, "rb") as f:
                expected = _copy_stream(f, io.BytesIO(), None, path.name, False)[1]
            with open(path, "rb") as src, open(folder / path.name, "xb") as out:
                md5, sha256 = _copy_stream(src, out, path.stat().st_size, path.name, progress)
            if sha256 != expected:
                raise OSError(f"the copy of {path} does not match it (SHA-256 {sha256}, "
                              f"source {expected})")
            found[path.name] = (str(path), _check_idx(folder / path.name, name, str(path)))
            official = OFFICIAL_MD5.get(path.name) == md5
            notes.append(f"{path.name}: " + ("the official release" if official else
                                             "not the official release (MD5 differs); used "
                                             "as given"))
        return found

    _fill(root, stage)
    return root, notes
