"""One rank's share of ``vqtok encode --shard-size N`` (:mod:`vqtok.apps.shards` plans the
sources and owns the manifest): its sources are encoded part by part, and each part of
``N`` items becomes one shard, written whole and renamed into place
(:func:`vqtok.formats.token_shards.write_shard`). An item that fails (an unreadable file, a
broken tar member, a caption that is not UTF-8) is recorded in its shard's failures and the
rest go on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vqtok.apps.files import (
    FLUSH,
    LOAD_CHUNK,
    Pixels,
    encode_pixels,
    file_chunks,
    skip_reason,
)
from vqtok.formats import token_shards as fmt
from vqtok.formats.images import load_image
from vqtok.formats.tars import NamedBytes, read_caption, tar_samples
from vqtok.tokenizers import ImageTokenizer, VideoTokenizer

log = logging.getLogger(__name__)


@dataclass
class Source:
    """A block of loose files (``files``) or one tar (``tar``)."""

    index: int
    files: list[tuple[Path, str]] = field(default_factory=list)
    tar: Path | None = None


@dataclass
class _Part:
    """One part of a source being encoded: its place and its items' names, sources and
    captions (or why an item failed before encoding)."""

    source: int
    part: int
    first: int
    last: bool = False
    names: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    captions: list[str | None | _Failed] = field(default_factory=list)
    results: dict[int, tuple[torch.Tensor, tuple[int, int]] | str] = field(default_factory=dict)
    frames: dict[int, int] = field(default_factory=dict)
    broke: list[str] | None = None
    """``[tar, reason]`` when the tar broke off in this part (its last)."""


class ShardWriter:
    """Encodes a rank's sources part by part and writes each part's shard."""

    def __init__(self, out: Path, run: str, dtype: np.dtype, shard_size: int, progress: bool,
                 unit: str) -> None:
        self.out, self.run_id, self.dtype, self.shard_size = out, run, dtype, shard_size
        self.progress, self.unit = progress, unit
        self.encoded = self.failed = self.written = 0

    def run(self, sources: list[Source], done: dict[int, dict[int, dict[str, Any]]],
            tokenizer: ImageTokenizer | VideoTokenizer, batch_size: int,
            workers: int | None) -> None:
        total = sum(len(s.files) for s in sources) + sum(_tar_samples_hint(s) for s in sources)
        with tqdm(total=total or None, unit="img" if self.unit == "images" else "clip", desc="encode",
                  disable=not self.progress, smoothing=0.05) as bar:
            self.bar = bar
            files = [s for s in sources if s.tar is None]
            if isinstance(tokenizer, VideoTokenizer):
                for source in files:
                    self._clips(source, tokenizer)
                return
            if files:
                self._images(self._file_items(files, tokenizer, workers), tokenizer, batch_size)
            for source in (s for s in sources if s.tar is not None):
                self._images(self._tar_items(source, done.get(source.index, {}), tokenizer),
                             tokenizer, batch_size)

    # ---- items in, parts out ----------------------------------------------------------

    def _images(self, items: Iterator[tuple[int, Pixels] | _Part | None],
                tokenizer: ImageTokenizer, batch_size: int) -> None:
        """Encode a stream of items in which each part is announced (a :class:`_Part`)
        before its items and closed by :data:`FLUSH`, and write each part's shard."""
        parts: list[_Part] = []

        def pixels_only() -> Iterator[tuple[int, Pixels] | None]:
            for item in items:
                if isinstance(item, _Part):
                    while parts and len(parts[0].results) == len(parts[0].names):
                        self._write(parts.pop(0))  # a part without items
                    parts.append(item)
                else:
                    yield item

        for i, result in encode_pixels(tokenizer, pixels_only(), batch_size):
            part = parts[0]
            part.results[i] = result
            self.bar.update(1)
            if len(part.results) == len(part.names):  # all in: a flush drained them
                self._write(parts.pop(0))
        for part in parts:  # parts whose items all failed before encoding, or none
            self._write(part)

    def _file_items(self, sources: list[Source], tokenizer: ImageTokenizer,
                    workers: int | None) -> Iterator[tuple[int, Pixels] | _Part | None]:
        """Loose files part by part (one part per source), read by the file loader in
        chunks that never straddle two sources."""
        files = [f for s in sources for f in s.files]
        chunks: list[range] = []
        owners: list[tuple[Source, int]] = []  # each chunk's source and its first index
        offset = 0
        for source in sources:
            for k in range(offset, offset + len(source.files), LOAD_CHUNK):
                chunks.append(range(k, min(offset + len(source.files), k + LOAD_CHUNK)))
                owners.append((source, offset))
            offset += len(source.files)
        part: _Part | None = None
        for k, chunk in enumerate(file_chunks(files, tokenizer, workers, chunks)):
            source, first = owners[k]
            if part is None or part.source != source.index:
                part = _Part(source.index, 0, 0, last=True)
                for path, name in source.files:
                    part.names.append(name)
                    part.sources.append(str(path))
                    part.captions.append(_sidecar_caption(path))
                yield part
            for i, pixels in chunk:
                caption = part.captions[i - first]
                yield i - first, caption.reason if isinstance(caption, _Failed) else pixels
            if k + 1 == len(chunks) or owners[k + 1][0] is not source:
                yield FLUSH

    def _tar_items(self, source: Source, done: dict[int, dict[str, Any]],
                   tokenizer: ImageTokenizer) -> Iterator[tuple[int, Pixels] | _Part | None]:
        """A tar's samples part by part; the samples of parts already on disk are skipped
        unread (not decoded)."""
        assert source.tar is not None
        errors: list[str] = []
        samples = tar_samples(source.tar, errors)
        pending = next(samples, None)
        part_index, item = 0, 0
        while pending is not None or part_index == 0:
            part = _Part(source.index, part_index, item)
            skip = part_index in done
            members = []
            while pending is not None and len(members) < self.shard_size:
                members.append(pending)
                pending = next(samples, None)
            part.last = pending is None
            if part.last and errors:
                part.broke = [str(source.tar), errors[0]]  # recorded with its failures
            if skip:
                part_index, item = part_index + 1, item + len(members)
                if part.last:
                    break
                continue
            for sample in members:  # the whole part is known before its first result
                name = sample.image_name or sample.key
                part.names.append(name)
                part.sources.append(f"{source.tar}:{name}")
                part.captions.append(sample.caption)
            yield part
            for j, sample in enumerate(members):
                yield j, _sample_pixels(sample, source.tar, tokenizer)
            yield FLUSH
            part_index, item = part_index + 1, item + len(members)
            if part.last:
                break

    def _clips(self, source: Source, tokenizer: VideoTokenizer) -> None:
        part = _Part(source.index, 0, 0, last=True)
        for j, (path, name) in enumerate(source.files):
            part.names.append(name)
            part.sources.append(str(path))
            part.captions.append(_sidecar_caption(path))
            try:
                pixels = tokenizer.frames(path)
                part.results[j] = (tokenizer.encode(pixels), tuple(pixels.shape[1:3]))
                part.frames[j] = int(pixels.shape[0])
            except ValueError as err:
                part.results[j] = str(err)
            self.bar.update(1)
        self._write(part)

    # ---- one shard ----------------------------------------------------------------------

    def _write(self, part: _Part) -> None:
        rows = fmt.ShardRows([], [], [], [], [], [])
        failed: list[list[str]] = []
        grids: dict[tuple[int, ...], int] = {}
        for j, (name, where, caption) in enumerate(zip(part.names, part.sources,
                                                       part.captions)):
            result = part.results.get(j, "not read")
            if isinstance(caption, _Failed):
                result = caption.reason
            if isinstance(result, str):
                failed.append([where, skip_reason(where, result)])
                continue
            ids, size = result
            grid = ids.numpy()
            rows.names.append(name)
            rows.sources.append(where)
            rows.captions.append(caption)
            rows.sizes.append(size)
            rows.frames.append(part.frames.get(j))
            rows.ids.append(grid)
            grids[grid.shape] = grids.get(grid.shape, 0) + 1
        if part.broke is not None:  # the tar broke off
            failed.append(part.broke)
            log.warning("%s", part.broke[1])
        meta = {"format": fmt.SHARD_FORMAT, "format_version": fmt.FORMAT_VERSION,
                "run": self.run_id, "source": part.source, "part": part.part,
                "first": part.first, "items": len(part.names), "last": part.last,
                "rows": len(rows), "tokens": int(sum(g.size for g in rows.ids)),
                "grids": [{"shape": list(s), "count": n} for s, n in sorted(grids.items())],
                "failed": failed}
        fmt.write_shard(self.out, rows, meta, self.dtype)
        self.encoded += len(rows)
        self.failed += len(part.names) - len(rows)
        self.written += 1


@dataclass
class _Failed:
    """A caption that could not be read: the item fails."""

    reason: str


def _sidecar_caption(path: Path) -> str | None | _Failed:
    """The caption of a loose input file: the UTF-8 text of ``<stem>.txt`` beside it."""
    text = path.with_suffix(".txt")
    if text == path or not text.is_file():
        return None
    try:
        return read_caption({"txt": text.read_bytes()})
    except (OSError, ValueError) as err:
        return _Failed(f"{text}: {err}")


def _sample_pixels(sample: Any, tar: Path, tokenizer: ImageTokenizer) -> Pixels:
    """A tar sample's pixels, or why it fails."""
    where = f"{tar}:{sample.image_name or sample.key}"
    if sample.caption_error is not None:
        return f"{where}: {sample.caption_error}"
    if sample.image is None:
        return f"{where}: the sample has no image member"
    try:
        image = load_image(NamedBytes(sample.image, where), max_pixels=tokenizer.max_pixels)
        return tokenizer.pixels(image)
    except Exception as err:  # noqa: BLE001 - any failure skips the item only
        return str(err) or type(err).__name__


def _tar_samples_hint(source: Source) -> int:
    """Samples of a tar source, counted from its member headers (for the progress bar's
    total; 0 when not a tar or unreadable)."""
    if source.tar is None:
        return 0
    import tarfile

    from webdataset.tariterators import base_plus_ext

    keys, previous = 0, None
    try:
        with tarfile.open(source.tar, "r:") as tar:
            for member in tar:
                key, _ = base_plus_ext(member.name)
                if member.isreg() and key is not None and key != previous:
                    keys, previous = keys + 1, key
    except (OSError, tarfile.TarError):
        pass
    return keys
