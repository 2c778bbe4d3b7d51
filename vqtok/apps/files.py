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
from vqtok.formats.images import check_pixels, image_files, load_image
from vqtok.formats.outputs import check_new_output, check_outputs, check_plain_name, is_within
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
    overwrite: bool = False,
) -> EncodeSummary:
    """Encode image files and folders to ``out_npz``, ``batch_size`` files at a time.

    ``out_npz`` may not be one of the images, nor exist unless ``overwrite``: that is
    checked before anything is read. A file that cannot be read or encoded for any reason
    (truncated, not an image, over the tokenizer's pixel budget, smaller than one token,
    out of memory) is logged, listed in the summary and in the ``.npz``, and the others
    go on. The ``.npz`` is written to a temporary file and renamed into place.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    files = find_images(paths_or_folders)
    out = check_new_output(out_npz, inputs=[path for path, _ in files], overwrite=overwrite)
    names: list[str] = []
    paths: list[str] = []
    sizes: list[tuple[int, int]] = []
    grids: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []

    def fail(path: Path, err: BaseException) -> None:
        reason = str(err).removeprefix(f"{path}: ") or type(err).__name__
        log.warning("skipping %s: %s", path, reason)
        failed.append((str(path), reason))

    with tqdm(total=len(files), unit="img", desc="encode", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            chunk, inputs = [], []
            for path, name in files[start:start + batch_size]:
                try:
                    check_plain_name(name, str(path))  # decode writes <out>/<name>.png
                    image = load_image(path, max_pixels=tokenizer.max_pixels)
                    inputs.append(tokenizer.preprocess(image))
                    chunk.append((path, name))
                except Exception as err:  # noqa: BLE001 - any failure skips the file only
                    fail(path, err)
            for (path, name), result in zip(chunk, _encode_each(tokenizer, inputs)):
                if isinstance(result, BaseException):
                    fail(path, result)
                    continue
                ids, size = result
                names.append(name)
                paths.append(str(path))
                sizes.append(size)
                grids.append(ids.numpy())
            bar.update(len(files[start:start + batch_size]))
    out = write_tokens(out, names=names, paths=paths, sizes=sizes, grids=grids,
                       failed=failed, codebook_size=tokenizer.codebook_size,
                       downsample_factor=tokenizer.downsample_factor,
                       num_stages=tokenizer.num_stages)
    return EncodeSummary(out_path=out, encoded=len(names),
                         tokens=int(sum(g.size for g in grids)), failed=failed)


def _encode_each(tokenizer: ImageTokenizer, inputs: list[torch.Tensor]
                 ) -> list[tuple[torch.Tensor, tuple[int, int]] | BaseException]:
    """The batch in one pass; if that fails, each image alone, so one bad image costs only
    itself (its exception takes its place in the result)."""
    try:
        return list(tokenizer.encode_tensors(inputs))
    except Exception:  # noqa: BLE001 - find the image that failed
        results: list[tuple[torch.Tensor, tuple[int, int]] | BaseException] = []
        for x in inputs:
            try:
                results += tokenizer.encode_tensors([x])
            except Exception as err:  # noqa: BLE001
                results.append(err)
        return results


def decode_file(
    npz: str | os.PathLike[str],
    tokenizer: ImageTokenizer,
    out_dir: str | os.PathLike[str],
    batch_size: int = 16,
    progress: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Decode a tokens ``.npz`` to PNGs in ``out_dir`` named after the sources
    (``photos/cat.jpg`` -> ``out_dir/photos/cat.png``; clashes get ``-1``, ``-2``...);
    returns the written paths in the file's order.

    Before anything is written: the names must be plain relative paths, two of them may
    not need the same path as a file and as a folder, no PNG may exist already unless
    ``overwrite`` (nor be the tokens file), and every declared image must fit the
    tokenizer's pixel budget. Each PNG is written atomically."""
    tokens = read_tokens(npz)
    made = (tokens.codebook_size, tokens.downsample_factor, tokens.num_stages)
    here = (tokenizer.codebook_size, tokenizer.downsample_factor, tokenizer.num_stages or 1)
    if made != here:
        raise ValueError(
            f"{npz}: tokens made with codebook_size={made[0]}, downsample_factor={made[1]}, "
            f"num_stages={made[2]}, but the tokenizer has {here[0]}, {here[1]} and {here[2]}")
    for name, (height, width) in zip(tokens.names, tokens.sizes):
        check_pixels(width, height, tokenizer.max_pixels, f"{npz}: image {name!r}")
    out = check_new_output(out_dir, inputs=[Path(npz)], overwrite=True, folder=True)
    targets = check_outputs(_output_paths(tokens.names, out, str(npz)), inputs=[Path(npz)],
                            overwrite=overwrite)
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
                    atomic_write(targets[i], lambda f, im=image: im.save(f, format="PNG"))
                bar.update(len(batch))
    return targets


def _output_paths(names: list[str], out: Path, source: str) -> list[Path]:
    """Where each name's PNG goes: its relative path under ``out``, with the suffix
    ``.png``; names that land on the same file get ``-1``, ``-2``... The names were
    checked to be plain relative paths when the file was read
    (:func:`~vqtok.formats.tokens.read_tokens`); the targets are checked to stay inside
    ``out`` (a symbolic link in ``out`` cannot lead them out)."""
    used: set[Path] = set()
    targets = []
    for name in names:
        stem = out.joinpath(*PurePosixPath(name).parts).with_suffix("")
        target, n = stem.with_name(stem.name + ".png"), 0
        while target in used:
            n += 1
            target = stem.with_name(f"{stem.name}-{n}.png")
        if not is_within(target, out):
            raise ValueError(f"{source}: image name {name!r} leads outside {out} (through a "
                             f"symbolic link)")
        used.add(target)
        targets.append(target)
    return targets
