"""Many image files -> one ``.npz`` of token ids, and back to PNGs (``vqtok encode|decode``).

The ``.npz`` layout is :mod:`vqtok.formats.tokens`; files are read by
:func:`vqtok.formats.images.load_image` (raster formats only, EXIF orientation applied).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from tqdm.auto import tqdm

from vqtok.formats.atomic import atomic_write
from vqtok.formats.images import image_files, load_image
from vqtok.formats.tokens import read_tokens, write_tokens
from vqtok.tokenizer import ImageTokenizer

__all__ = ["EncodeSummary", "decode_file", "encode_files", "find_images"]

log = logging.getLogger(__name__)


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
            found += [(path, path.relative_to(given).as_posix()) for path in image_files(given)]
        else:
            raise ValueError(f"{given}: no such file or folder")
    if not found:
        raise ValueError(f"no image files found in {[str(p) for p in paths_or_folders]}")
    return found


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
    out = write_tokens(out_npz, names=names, paths=paths, sizes=sizes, grids=grids,
                       failed=failed, codebook_size=tokenizer.codebook_size,
                       downsample_factor=tokenizer.downsample_factor)
    return EncodeSummary(out_path=out, encoded=len(names),
                         tokens=int(sum(g.size for g in grids)), failed=failed)


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
