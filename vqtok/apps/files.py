"""Many image files -> one ``.npz`` of token ids, and back to PNGs (``vqtok encode|decode``).

The ``.npz`` layout is :mod:`vqtok.formats.tokens`; files are read by
:func:`vqtok.formats.images.load_image` (raster formats only, EXIF orientation applied).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vqtok.formats.atomic import atomic_write
from vqtok.formats.images import TooManyPixelsError, check_pixels, image_files, load_image
from vqtok.formats.inputs import check_regular_file, not_regular
from vqtok.formats.outputs import (
    check_new_output,
    check_output_folder,
    check_outputs,
    check_plain_name,
    is_within,
)
from vqtok.formats.tokens import read_tokens, write_tokens
from vqtok.tokenizers import ImageTokenizer
from vqtok.tokenizers.batching import Size, SizeBuckets
from vqtok.validation import check_positive

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
    unit: str = "images"
    """What was encoded, in the summary line ("images", "clips")."""

    def __str__(self) -> str:
        text = f"encoded {self.encoded} {self.unit} ({self.tokens} tokens) to {self.out_path}"
        if self.failed:
            listed = "; ".join(f"{path}: {reason}" for path, reason in self.failed)
            text += f"; {len(self.failed)} files failed: {listed}"
        return text


def find_images(paths_or_folders: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, str]]:
    """``(path, name)`` of every image to encode: files as given (any extension), folders
    searched recursively for image suffixes (hidden entries skipped), in sorted order.
    Raises ValueError for a path that does not exist or when nothing is found."""
    return find_inputs(paths_or_folders, image_files, "image files")


def find_inputs(paths_or_folders: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
                in_folder: Callable[[Path], list[Path]], what: str) -> list[tuple[Path, str]]:
    """``(path, name)`` of every input: a file as given, a folder as the ``in_folder(folder)``
    paths it yields (named relative to it). ValueError for a missing path, a path given by
    name that is neither a regular file nor a folder (a named pipe, a device), or when
    nothing is found (``what`` names what was looked for)."""
    if isinstance(paths_or_folders, (str, os.PathLike)):
        paths_or_folders = [paths_or_folders]
    found: list[tuple[Path, str]] = []
    for given in map(Path, paths_or_folders):
        if given.is_file():
            found.append((given, given.name))
        elif given.is_dir():
            found += [(path, path.relative_to(given.parent if path == given else given)
                       .as_posix()) for path in in_folder(given)]
        elif not_regular(given) is not None:
            raise ValueError(f"{given}: {not_regular(given)}, not a regular file or a folder; "
                             f"give image files or folders")
        else:
            raise ValueError(f"{given}: no such file or folder")
    if not found:
        raise ValueError(f"no {what} found in {[str(p) for p in paths_or_folders]}")
    return found


def encode_files(
    paths_or_folders: Sequence[str | os.PathLike[str]],
    tokenizer: ImageTokenizer,
    out_npz: str | os.PathLike[str],
    batch_size: int = 16,
    progress: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
    also_inputs: Sequence[str | os.PathLike[str]] = (),
) -> EncodeSummary:
    """Encode image files and folders to ``out_npz``.

    Files stream through a torch DataLoader: ``workers`` processes (default:
    :func:`default_workers`) read and convert images in chunks of :data:`LOAD_CHUNK`
    while this process runs the model. Images wait in one bucket
    per padded size until the bucket holds a batch (``batch_size`` images, or the fixed
    batch the tokenizer uses for that size), as the tokenizer's planner lays them out
    (:class:`~vqtok.tokenizers.batching.SizeBuckets`), so a forward pass never mixes
    sizes; the ids of an image do not depend on its batch.
    Images over :data:`ALONE_PIXELS` are read here instead, one at a time when their turn
    comes, and encoded at once (on tiles, if the model allows): memory stays bounded
    whatever the images' sizes.

    ``out_npz`` may not be one of the images or ``also_inputs`` (the tokenizer's directory:
    nor lie inside it), nor exist unless ``overwrite``: that is checked before anything is
    read. A file that cannot be read or encoded for any reason
    (truncated, not an image, over the tokenizer's pixel budget, smaller than one token,
    out of memory) is logged, listed in the summary and in the ``.npz``, and the others
    go on. The ``.npz`` lists images in the order of the files found and is written to a
    temporary file and renamed into place.
    """
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers must be an int >= 0 or None, got {workers!r}")
    check_positive(batch_size=batch_size)
    files = find_images(paths_or_folders)
    out = check_new_output(out_npz, inputs=[*also_inputs, *(path for path, _ in files)],
                           overwrite=overwrite)
    done: dict[int, tuple[torch.Tensor, tuple[int, int]]] = {}
    failed: dict[int, tuple[str, str]] = {}
    with tqdm(total=len(files), unit="img", desc="encode", disable=not progress) as bar:
        items = (item for chunk in file_chunks(files, tokenizer, workers) for item in chunk)
        for i, result in encode_pixels(tokenizer, items, batch_size):
            if isinstance(result, str):
                failed[i] = (str(files[i][0]), skip_reason(files[i][0], result))
            else:
                done[i] = result
            bar.update(1)
    order = sorted(done)
    grids = [done[i][0].numpy() for i in order]
    out = write_tokens(out, names=[files[i][1] for i in order],
                       paths=[str(files[i][0]) for i in order],
                       sizes=[done[i][1] for i in order], grids=grids,
                       failed=[failed[i] for i in sorted(failed)],
                       codebook_size=tokenizer.codebook_size,
                       downsample_factor=tokenizer.downsample_factor,
                       num_stages=tokenizer.num_stages)
    return EncodeSummary(out_path=out, encoded=len(order),
                         tokens=int(sum(g.size for g in grids)),
                         failed=[failed[i] for i in sorted(failed)])


LOAD_CHUNK = 64
"""Files a loader worker reads per task."""


def default_workers(files: int, cores: int | None = None) -> int:
    """Loader workers for ``files`` files on ``cores`` CPU cores (default: this machine's):
    one per core beyond the first two, at most 4, and none for a single chunk of files.
    The model's threads use every core, so on two cores workers only add their start-up
    and the copies between processes (benchmarks/RESULTS_tokenize.md: 2,048 small PNGs
    encode a third slower with two workers than with none)."""
    cores = (os.cpu_count() or 1) if cores is None else cores
    return 0 if files <= LOAD_CHUNK else max(0, min(4, cores - 2))


ALONE_PIXELS = 1 << 20
"""Images over this many pixels (from the file's header) skip the loader workers and the
buckets: they are read and encoded one at a time."""
PENDING_VALUES = 1 << 26
"""uint8 values (64 MiB) of decoded images that may wait for a full batch before every
bucket is encoded."""


FLUSH = None
"""In the stream given to :func:`encode_pixels`: encode every image still waiting now."""

Pixels = torch.Tensor | str | Callable[[], Image.Image]
"""An item of :func:`encode_pixels`: uint8 pixels ``(C, H, W)``, the reason the item
failed, or a function that reads a large image when its turn comes."""


def encode_pixels(tokenizer: ImageTokenizer, items: Iterable[tuple[int, Pixels] | None],
                  batch_size: int) -> Iterator[tuple[int, tuple[torch.Tensor, Size] | str]]:
    """``(index, ids (h, w), (height, width))`` or ``(index, reason)`` for each item of
    ``items`` (module doc of :func:`encode_files`), as their batches are encoded: images
    wait in one bucket per padded size until it holds a batch, so the order of the results
    is not that of the items. A function item (a large image) is read and encoded at once,
    by itself. :data:`FLUSH` in ``items`` encodes every waiting image (a caller that
    writes what it has so far); so does the end of ``items``, and more than
    :data:`PENDING_VALUES` of waiting pixels."""
    buckets: SizeBuckets[tuple[int, torch.Tensor]] = tokenizer.planner.buckets(batch_size)

    def encode(members: list[tuple[int, torch.Tensor]]
               ) -> Iterator[tuple[int, tuple[torch.Tensor, Size] | str]]:
        inputs = [tokenizer.normalization.to_model(pixels) for _, pixels in members]
        for (i, _), result in zip(members, _encode_each(tokenizer, inputs)):
            yield i, (str(result) or type(result).__name__ if isinstance(result, BaseException)
                      else result)

    pending = 0
    for item in items:
        if item is FLUSH:
            for members in buckets.drain():
                yield from encode(members)
            pending = 0
            continue
        i, pixels = item
        if callable(pixels):  # a large image: read it here, now, and encode it alone
            try:
                pixels = tokenizer.pixels(pixels())
            except Exception as err:  # noqa: BLE001 - any failure skips the item only
                pixels = str(err) or type(err).__name__
            if not isinstance(pixels, str):
                yield from encode([(i, pixels)])
                continue
        if isinstance(pixels, str):
            yield i, pixels
            continue
        full = buckets.add(*pixels.shape[1:], (i, pixels))
        pending += pixels.numel()
        if full is not None:
            pending -= sum(x.numel() for _, x in full)
            yield from encode(full)
        if pending > PENDING_VALUES:  # many sizes: bound the memory they hold
            for members in buckets.drain():
                yield from encode(members)
            pending = 0
    for members in buckets.drain():
        yield from encode(members)


def skip_reason(path: object, reason: str) -> str:
    """Log that the input ``path`` is skipped; the reason without a leading ``path: ``."""
    reason = reason.removeprefix(f"{path}: ")
    log.warning("skipping %s: %s", path, reason)
    return reason


def file_chunks(files: list[tuple[Path, str]], tokenizer: ImageTokenizer,
                workers: int | None, chunks: Sequence[range] | None = None
                ) -> Iterator[list[tuple[int, Pixels]]]:
    """``files`` (``(path, name)``) as lists of :func:`encode_pixels` items, in order, read by
    ``workers`` loader processes (default: :func:`default_workers`), :data:`LOAD_CHUNK`
    files per list, or the index ranges ``chunks``. An image over :data:`ALONE_PIXELS`
    comes as a function that reads it in this process."""
    if workers is None:
        workers = default_workers(len(files))
    loader = DataLoader(_FileChunks(files, tokenizer, chunks), batch_size=None,
                        num_workers=workers, collate_fn=_as_is,
                        prefetch_factor=2 if workers else None)
    for chunk in loader:
        yield [(i, functools.partial(load_image, files[i][0], max_pixels=tokenizer.max_pixels)
                if pixels is None else pixels) for i, pixels in chunk]


class _FileChunks(Dataset):
    """Chunk ``k`` of the files -> ``[(index, uint8 pixels (C, H, W), a failure's reason, or
    None for an image over ALONE_PIXELS), ...]``, read in a loader worker. A
    folder entry that is not a regular file (a named pipe would block the read forever)
    fails unopened. The chunks are ``chunks`` (index ranges), else :data:`LOAD_CHUNK`
    files each."""

    def __init__(self, files: list[tuple[Path, str]], tokenizer: ImageTokenizer,
                 chunks: Sequence[range] | None = None) -> None:
        self.files = files
        self.tokenizer = tokenizer
        self.chunks = list(chunks) if chunks is not None else [
            range(k, min(len(files), k + LOAD_CHUNK)) for k in range(0, len(files), LOAD_CHUNK)]

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> list[tuple[int, torch.Tensor | str | None]]:
        budget = self.tokenizer.max_pixels
        alone = budget is None or budget > ALONE_PIXELS  # can a file be large but allowed?
        chunk: list[tuple[int, torch.Tensor | str | None]] = []
        for i in self.chunks[k]:
            path, name = self.files[i]
            try:
                check_plain_name(name, str(path))  # decode writes <out>/<name>.png
                check_regular_file(path)
                image = load_image(path, max_pixels=ALONE_PIXELS if alone else budget)
                chunk.append((i, self.tokenizer.pixels(image)))
            except TooManyPixelsError as err:  # judged from the header, nothing decoded
                chunk.append((i, None) if alone else (i, str(err)))  # None: read it alone
            except Exception as err:  # noqa: BLE001 - any failure skips the file only
                chunk.append((i, str(err) or type(err).__name__))
        return chunk


def _as_is(chunk: list) -> list:
    return chunk


def _encode_each(tokenizer: ImageTokenizer, inputs: list[torch.Tensor]
                 ) -> list[tuple[torch.Tensor, tuple[int, int]] | BaseException]:
    """The batch (of one padded size) in one pass; if that fails, each image alone, so one
    bad image costs only itself (its exception takes its place in the result)."""
    try:
        return list(tokenizer.encode_each(inputs, batch_size=len(inputs)))
    except Exception:  # noqa: BLE001 - find the image that failed
        results: list[tuple[torch.Tensor, tuple[int, int]] | BaseException] = []
        for x in inputs:
            try:
                results += tokenizer.encode_each([x])
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
    also_inputs: Sequence[str | os.PathLike[str]] = (),
) -> list[Path]:
    """Decode a tokens ``.npz`` to PNGs in ``out_dir`` named after the sources
    (``photos/cat.jpg`` -> ``out_dir/photos/cat.png``; clashes get ``-1``, ``-2``...);
    returns the written paths in the file's order.

    Before anything is written: the names must be plain relative paths, two of them may
    not need the same path as a file and as a folder, no PNG may exist already unless
    ``overwrite``, none may be (or lie inside) the tokens file or ``also_inputs`` (the
    tokenizer's directory), and every declared image must fit the
    tokenizer's pixel budget. Each PNG is written atomically."""
    tokens = read_tokens(npz)
    if tokens.frames is not None:
        raise ValueError(f"{npz}: clips written by a video tokenizer; decode them with that "
                         f"video tokenizer")
    made = (tokens.codebook_size, tokens.downsample_factor, tokens.num_stages)
    here = (tokenizer.codebook_size, tokenizer.downsample_factor, tokenizer.num_stages or 1)
    if made != here:
        raise ValueError(
            f"{npz}: tokens made with codebook_size={made[0]}, downsample_factor={made[1]}, "
            f"num_stages={made[2]}, but the tokenizer has {here[0]}, {here[1]} and {here[2]}")
    for name, (height, width) in zip(tokens.names, tokens.sizes):
        check_pixels(width, height, tokenizer.max_pixels, f"{npz}: image {name!r}")
    inputs = [Path(npz), *map(Path, also_inputs)]
    out = check_output_folder(out_dir, inputs=inputs)
    targets = check_outputs(output_paths(tokens.names, out, str(npz)), inputs=inputs,
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


def output_paths(names: list[str], out: Path, source: str, suffix: str = ".png") -> list[Path]:
    """Where each name's file goes: its relative path under ``out``, with ``suffix``
    (``.png``); names that land on the same file get ``-1``, ``-2``... The names were
    checked to be plain relative paths when the file was read
    (:func:`~vqtok.formats.tokens.read_tokens`); the targets are checked to stay inside
    ``out`` (a symbolic link in ``out`` cannot lead them out)."""
    used: set[Path] = set()
    targets = []
    for name in names:
        stem = out.joinpath(*PurePosixPath(name).parts).with_suffix("")
        target, n = stem.with_name(stem.name + suffix), 0
        while target in used:
            n += 1
            target = stem.with_name(f"{stem.name}-{n}{suffix}")
        if not is_within(target, out):
            raise ValueError(f"{source}: image name {name!r} leads outside {out} (through a "
                             f"symbolic link)")
        used.add(target)
        targets.append(target)
    return targets
