"""Many image files -> one ``.npz`` of token ids, and back to PNGs (``vqtok encode|decode``).

The ``.npz`` (read with ``allow_pickle=False``; every array is numeric or fixed-width
unicode) holds:

=========================  ===============================================================
``format``                 ``"vqtok.tokens"``; ``format_version``: 1
``tokenizer_format_version``  the tokenizer directory format version (``vqtok.io``)
``codebook_size``          ids lie in ``[0, codebook_size)``; ``downsample_factor``: f
``names``                  ``(N,)`` source name per image: its path under the folder that
                           was given, or its file name; the PNG written by ``decode``
``paths``                  ``(N,)`` source paths as found
``sizes``                  ``(N, 2)`` original (height, width) in pixels
``grids``                  ``(N, 2)`` token grid (h, w) = ceil(size / f)
``ids``                    ``(sum h*w,)`` int64, each image's grid row-major, concatenated
``failed_paths``           ``(M,)`` files that could not be encoded; ``failed_reasons`` why
=========================  ===============================================================
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from vqtok.atomic import atomic_write
from vqtok.io import FORMAT_VERSION as TOKENIZER_FORMAT_VERSION
from vqtok.tokenizer import ImageTokenizer

log = logging.getLogger(__name__)

TOKENS_FORMAT = "vqtok.tokens"
TOKENS_FORMAT_VERSION = 1
# Raster formats only: PIL's EPS/PS plugins run Ghostscript, and some plugins are stubs.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "TGA", "QOI", "JPEG2000",
                 "ICO", "PCX", "SGI", "PSD", "AVIF")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif",
                            ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi",
                            ".jp2", ".j2k", ".ico", ".pcx", ".sgi", ".psd", ".avif"})
_KEYS = ("format", "format_version", "tokenizer_format_version", "codebook_size",
         "downsample_factor", "names", "paths", "sizes", "grids", "ids", "failed_paths",
         "failed_reasons")


@dataclass
class EncodeSummary:
    """What :func:`encode_files` did."""

    out_path: Path
    """The ``.npz`` written."""
    encoded: int
    """Images encoded."""
    tokens: int
    """Token ids written, over all images."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of each file that could not be encoded."""

    def __str__(self) -> str:
        text = f"encoded {self.encoded} images ({self.tokens} tokens) to {self.out_path}"
        if self.failed:
            listed = "; ".join(f"{path}: {reason}" for path, reason in self.failed)
            text += f"; {len(self.failed)} files failed: {listed}"
        return text


@dataclass
class TokenFile:
    """The content of a tokens ``.npz`` (see the module doc), validated."""

    names: list[str]
    sizes: list[tuple[int, int]]
    ids: list[np.ndarray]
    """One int64 ``(h, w)`` grid per image."""
    codebook_size: int
    downsample_factor: int


def find_images(paths_or_folders: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, str]]:
    """``(path, name)`` of every image to encode: files as given (any extension), folders
    searched recursively for image suffixes (hidden entries skipped), in sorted order.
    Raises ValueError for a path that does not exist or when nothing is found."""
    if isinstance(paths_or_folders, (str, os.PathLike)):
        paths_or_folders = [paths_or_folders]
    found: list[tuple[Path, str]] = []
    for given in map(Path, paths_or_folders):
        if given.is_file():
            found.append((given, given.name))
        elif given.is_dir():
            for root, dirs, files in os.walk(given):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    path = Path(root, name)
                    if not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES:
                        found.append((path, path.relative_to(given).as_posix()))
        else:
            raise ValueError(f"{given}: no such file or folder")
    if not found:
        raise ValueError(f"no image files found in {[str(p) for p in paths_or_folders]}")
    return found


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image file fully, upright (EXIF orientation applied). Raises ValueError
    naming the file when it is empty, truncated, not an image or of another format."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: cannot read the image ({err})") from err


def encode_files(
    paths_or_folders: Sequence[str | os.PathLike[str]],
    tokenizer: ImageTokenizer,
    out_npz: str | os.PathLike[str],
    batch_size: int = 16,
    progress: bool = True,
) -> EncodeSummary:
    """Encode image files and folders to ``out_npz``, ``batch_size`` files at a time.

    A file that cannot be read or encoded (truncated, not an image, smaller than one
    token) is logged, listed in the summary and in the ``.npz``, and the others go on.
    The ``.npz`` is written to a temporary file and renamed into place.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    files = find_images(paths_or_folders)
    names: list[str] = []
    paths: list[str] = []
    sizes: list[tuple[int, int]] = []
    grids: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []
    with tqdm(total=len(files), unit="img", desc="encode", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            chunk, inputs = [], []
            for path, name in files[start:start + batch_size]:
                try:
                    inputs.append(tokenizer.preprocess(load_image(path)))
                    chunk.append((path, name))
                except ValueError as err:
                    reason = str(err).removeprefix(f"{path}: ")
                    log.warning("skipping %s: %s", path, reason)
                    failed.append((str(path), reason))
            for (path, name), (ids, size) in zip(chunk, tokenizer.encode_tensors(inputs)):
                names.append(name)
                paths.append(str(path))
                sizes.append(size)
                grids.append(ids.numpy())
            bar.update(len(files[start:start + batch_size]))
    arrays = {
        "format": np.array(TOKENS_FORMAT),
        "format_version": np.array(TOKENS_FORMAT_VERSION, dtype=np.int64),
        "tokenizer_format_version": np.array(TOKENIZER_FORMAT_VERSION, dtype=np.int64),
        "codebook_size": np.array(tokenizer.codebook_size, dtype=np.int64),
        "downsample_factor": np.array(tokenizer.downsample_factor, dtype=np.int64),
        "names": np.array(names, dtype=str),
        "paths": np.array(paths, dtype=str),
        "sizes": np.array(sizes, dtype=np.int64).reshape(-1, 2),
        "grids": np.array([g.shape for g in grids], dtype=np.int64).reshape(-1, 2),
        "ids": np.concatenate([g.reshape(-1) for g in grids] or [np.zeros(0)]).astype(np.int64),
        "failed_paths": np.array([p for p, _ in failed], dtype=str),
        "failed_reasons": np.array([r for _, r in failed], dtype=str),
    }
    out = Path(out_npz)
    atomic_write(out, lambda f: np.savez_compressed(f, **arrays))
    return EncodeSummary(out_path=out, encoded=len(names), tokens=int(arrays["ids"].size),
                         failed=failed)


def read_tokens(npz: str | os.PathLike[str]) -> TokenFile:
    """Load and validate a tokens ``.npz``; ValueError naming the file and the problem."""
    path = Path(npz)
    if not path.is_file():
        raise ValueError(f"{path}: no such tokens file")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _KEYS if k not in data.files]
            if missing:
                raise ValueError(f"missing keys {missing}; not an .npz from `vqtok encode`")
            arrays = {k: data[k] for k in _KEYS}
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"{path}: not a readable tokens file ({err})") from err

    def fail(problem: str) -> ValueError:
        return ValueError(f"{path}: {problem}")

    fmt, version = arrays["format"], arrays["format_version"]
    if fmt.shape != () or str(fmt) != TOKENS_FORMAT or version.shape != () or (
        version.dtype.kind not in "iu" or int(version) != TOKENS_FORMAT_VERSION
    ):
        raise fail(f"unsupported format {fmt!r} version {version!r}; expected "
                   f"{TOKENS_FORMAT!r} version {TOKENS_FORMAT_VERSION}")
    scalars = [arrays[key] for key in ("codebook_size", "downsample_factor")]
    if any(a.shape != () or a.dtype.kind not in "iu" or int(a) < 1 for a in scalars):
        raise fail(f"codebook_size and downsample_factor must be positive integers, got "
                   f"{scalars}")
    k, f = (int(a) for a in scalars)
    names, sizes, grids, ids = (arrays[key] for key in ("names", "sizes", "grids", "ids"))
    n = len(names)
    if sizes.shape != (n, 2) or grids.shape != (n, 2) or ids.ndim != 1:
        raise fail(f"inconsistent shapes: names {names.shape}, sizes {sizes.shape}, grids "
                   f"{grids.shape}, ids {ids.shape}")
    if any(a.dtype.kind not in "iu" for a in (sizes, grids, ids)):
        raise fail(f"sizes, grids and ids must be integers, got {sizes.dtype}, "
                   f"{grids.dtype}, {ids.dtype}")
    if n and (grids.min() < 1 or np.any(-(-sizes // f) != grids)):
        raise fail(f"grids do not match sizes / downsample_factor {f}")
    counts = grids.prod(axis=1)
    if counts.sum() != ids.size:
        raise fail(f"ids hold {ids.size} values but the grids need {int(counts.sum())}")
    if ids.size and (ids.min() < 0 or ids.max() >= k):
        raise fail(f"ids must lie in [0, {k}), got values in [{ids.min()}, {ids.max()}]")
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return TokenFile(
        names=[str(s) for s in names],
        sizes=[(int(h), int(w)) for h, w in sizes],
        ids=[ids[a:b].astype(np.int64).reshape(tuple(g)) for a, b, g in
             zip(offsets[:-1], offsets[1:], grids)],
        codebook_size=k,
        downsample_factor=f,
    )


def decode_file(
    npz: str | os.PathLike[str],
    tokenizer: ImageTokenizer,
    out_dir: str | os.PathLike[str],
    batch_size: int = 16,
    progress: bool = False,
) -> list[Path]:
    """Decode a tokens ``.npz`` to PNGs in ``out_dir`` named after the sources
    (``photos/cat.jpg`` -> ``out_dir/photos/cat.png``; clashes get ``-1``, ``-2``...);
    returns the written paths in the file's order. Each PNG is written atomically."""
    tokens = read_tokens(npz)
    if (tokens.codebook_size, tokens.downsample_factor) != (
        tokenizer.codebook_size, tokenizer.downsample_factor
    ):
        raise ValueError(
            f"{npz}: tokens made with codebook_size={tokens.codebook_size}, "
            f"downsample_factor={tokens.downsample_factor}, but the tokenizer has "
            f"{tokenizer.codebook_size} and {tokenizer.downsample_factor}"
        )
    out = Path(out_dir)
    targets = _output_paths(tokens.names, out, str(npz))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, grid in enumerate(tokens.ids):
        groups.setdefault(grid.shape, []).append(i)
    with tqdm(total=len(targets), unit="img", desc="decode", disable=not progress) as bar:
        for members in groups.values():
            for start in range(0, len(members), batch_size):
                batch = members[start:start + batch_size]
                ids = torch.from_numpy(np.stack([tokens.ids[i] for i in batch]))
                images = tokenizer.decode(ids, [tokens.sizes[i] for i in batch], batch_size)
                for i, image in zip(batch, images):
                    targets[i].parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(targets[i], lambda f, im=image: im.save(f, format="PNG"))
                bar.update(len(batch))
    return targets


def _output_paths(names: list[str], out: Path, source: str) -> list[Path]:
    used: set[Path] = set()
    targets = []
    for name in names:
        rel = PurePosixPath(name)
        if not name or rel.is_absolute() or ".." in rel.parts or "\\" in name:
            raise ValueError(f"{source}: unsafe image name {name!r} (absolute or with '..')")
        stem = out.joinpath(*rel.parts).with_suffix("")
        target, n = stem.with_name(stem.name + ".png"), 0
        while target in used:
            n += 1
            target = stem.with_name(f"{stem.name}-{n}.png")
        used.add(target)
        targets.append(target)
    return targets
