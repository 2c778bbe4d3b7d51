"""Many images, clips or image-text pairs -> a sharded token dataset
(``vqtok encode INPUTS --out DIR --shard-size N``; the format is
:mod:`vqtok.formats.token_shards`, docs/formats.md#token-shards).

The inputs are loose files (image files and folders, as :func:`vqtok.apps.files.find_images`
finds them, or clips with a video tokenizer) and webdataset tars
(:mod:`vqtok.formats.tars`). They are cut into *sources*: each block of ``N`` loose files,
and each tar. Source ``s`` is encoded by rank ``s mod W`` of ``W`` processes; its parts
of ``N`` items become one shard each, written whole and renamed into place. A shard's
content depends on the inputs alone, so one process, several, or a run killed and
started again write the same files.

Resume: a rerun of the same command (same tokenizer, same inputs, same ``N``; the
manifest records all three and any change is refused) keeps every shard on disk and
encodes only the parts that have none. When every source is complete, rank 0 writes the
manifest with each shard's size and SHA-256. Each rank's encoding and writing is
:class:`vqtok.apps.shard_writer.ShardWriter`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vqtok.apps.files import find_images
from vqtok.apps.shard_writer import ShardWriter, Source
from vqtok.formats import token_shards as fmt
from vqtok.formats.outputs import check_not_an_input
from vqtok.formats.tars import is_tar
from vqtok.formats.tokenizer_dir import fingerprint
from vqtok.tokenizers import ImageTokenizer, VideoTokenizer
from vqtok.validation import check_positive
from vqtok.version import vqtok_version

log = logging.getLogger(__name__)

Gather = Callable[[Any], list[Any]]
"""Every rank's value, in rank order (``torch.distributed.all_gather_object``); also a
barrier."""


@dataclass
class ShardSummary:
    """What :func:`encode_shards` did, over all ranks."""

    out: Path
    encoded: int = 0
    """Items encoded by this run."""
    failed: int = 0
    """Items of this run that could not be encoded."""
    written: int = 0
    """Shards this run wrote."""
    shards: int = 0
    """Shards of the dataset."""
    rows: int = 0
    """Rows of the dataset."""
    tokens: int = 0
    seconds: float = 0.0
    unit: str = "images"

    def __str__(self) -> str:
        rate = self.encoded / self.seconds if self.seconds > 0 else 0.0
        kept = self.shards - self.written
        return (f"encoded {self.encoded:,} {self.unit} ({rate:,.0f}/s), {self.failed:,} failed, "
                f"in {self.seconds:.1f} s: {self.written:,} shards written"
                f"{f', {kept:,} kept from an earlier run' if kept else ''}; {self.out} holds "
                f"{self.rows:,} {self.unit} ({self.tokens:,} tokens) in {self.shards:,} shards")


def plan_sources(inputs: Sequence[str | os.PathLike[str]], shard_size: int, video: bool
                 ) -> tuple[list[Source], dict[str, Any]]:
    """The sources of ``inputs`` (module doc) and the manifest's ``inputs`` record, whose
    ``sha256`` covers each input file's name and size in order."""
    tars = [Path(p) for p in inputs if is_tar(p) and Path(p).is_file()]
    loose_inputs = [p for p in inputs if not (is_tar(p) and Path(p).is_file())]
    if video and tars:
        raise ValueError(f"{tars[0]}: a video tokenizer encodes GIFs and frame folders, not "
                         f"tars")
    files: list[tuple[Path, str]] = []
    if loose_inputs:
        if video:
            from vqtok.apps.videos import find_clips

            files = find_clips(loose_inputs)
        else:
            files = find_images(loose_inputs)
    digest = hashlib.sha256()
    for path, name in files:
        digest.update(f"file\t{name}\t{_size(path)}\n".encode())
    for tar in tars:
        digest.update(f"tar\t{tar.name}\t{tar.stat().st_size}\n".encode())
    sources = [Source(k, files=files[start:start + shard_size])
               for k, start in enumerate(range(0, len(files), shard_size))]
    sources += [Source(len(sources) + k, tar=tar) for k, tar in enumerate(tars)]
    record = {"files": len(files), "tars": len(tars), "sources": len(sources),
              "sha256": digest.hexdigest()}
    return sources, record


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0  # a frame folder: 0
    except OSError:
        return -1


def tokenizer_record(tokenizer: ImageTokenizer | VideoTokenizer, path: str | os.PathLike[str]
                     ) -> dict[str, Any]:
    """The manifest's ``tokenizer`` record."""
    video = isinstance(tokenizer, VideoTokenizer)
    return {"fingerprint": fingerprint(path), "codebook_size": tokenizer.codebook_size,
            "downsample_factor": tokenizer.downsample_factor,
            "num_stages": tokenizer.num_stages,
            "temporal_factor": tokenizer.temporal_factor if video else None,
            "kind": "video" if video else "image"}


def _single(value: Any) -> list[Any]:
    return [value]


def encode_shards(
    inputs: Sequence[str | os.PathLike[str]],
    tokenizer: ImageTokenizer | VideoTokenizer,
    tokenizer_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    shard_size: int,
    batch_size: int = 16,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    rank: int = 0,
    world: int = 1,
    gather: Gather = _single,
) -> ShardSummary:
    """Encode ``inputs`` into the token dataset ``out`` (module doc) as rank ``rank`` of
    ``world`` processes; every rank calls it, and ``gather`` joins them. Returns the
    summary over all ranks (rank 0's is the one to print).

    Refused, in one line, before anything is written: ``out`` among or around the inputs
    (``tokenizer_path`` counts as one), ``out`` a folder that is not a token dataset or
    one written with another tokenizer, input list or shard size (unless ``overwrite``,
    which replaces it). An item that cannot be read or encoded is logged and recorded in
    its shard; the others go on. An error that stops a rank (a full disk) leaves every
    shard written so far whole, and a rerun continues from them."""
    check_positive(shard_size=shard_size, batch_size=batch_size)
    start = time.perf_counter()
    out = Path(out)
    video = isinstance(tokenizer, VideoTokenizer)
    sources, input_record = plan_sources(inputs, shard_size, video)
    check_not_an_input(out, [tokenizer_path, *inputs], holding=True)
    tok_record = tokenizer_record(tokenizer, tokenizer_path)
    run = fmt.run_id(tok_record, input_record["sha256"], shard_size)
    dtype = fmt.id_dtype(tokenizer.codebook_size)
    manifest = {
        "format": fmt.FORMAT, "format_version": fmt.FORMAT_VERSION,
        "vqtok_version": vqtok_version(), "complete": False, "run": run,
        "tokenizer": tok_record, "inputs": input_record, "shard_size": shard_size,
        "id_dtype": dtype.name, "rows": 0, "tokens": 0, "grids": [], "failed": [], "shards": [],
    }
    problem = None
    if rank == 0:  # judges and prepares the folder; the other ranks wait for its verdict
        try:
            _prepare(out, manifest, _check_out(out, manifest, overwrite))
        except (OSError, ValueError) as err:
            problem = (isinstance(err, ValueError), str(err) or type(err).__name__)
    problems = [p for p in gather(problem) if p]
    if problems:
        refused, text = problems[0]
        raise (ValueError if refused else OSError)(text)

    done = _done_parts(out, run)
    mine = [s for s in sources if s.index % world == rank and not _source_done(s, done)]
    writer = ShardWriter(out, run, dtype, shard_size, progress and rank == 0,
                         unit="clips" if video else "images")
    problem = _attempt(lambda: writer.run(mine, done, tokenizer, batch_size, workers))
    stats = gather((problem, writer.encoded, writer.failed, writer.written))
    problems = [p for p, *_ in stats if p]
    summary = ShardSummary(out, unit=writer.unit, encoded=sum(s[1] for s in stats),
                           failed=sum(s[2] for s in stats), written=sum(s[3] for s in stats))
    if not problems and rank == 0:
        problem = _attempt(lambda: _finish(out, manifest, sources))
        problems = [problem] if problem else []
    problems = [p for p in gather(problems[0] if problems else None) if p] or problems
    if problems:
        raise OSError(f"{problems[0]}; the shards written so far are complete: rerun the same "
                      f"command to encode the rest")
    final = fmt.read_manifest(out)
    summary.shards, summary.rows, summary.tokens = (len(final["shards"]), final["rows"],
                                                    final["tokens"])
    summary.seconds = time.perf_counter() - start
    return summary


def _attempt(step: Callable[[], object]) -> str | None:
    """Run ``step``; the one-line reason it failed (an OSError such as a full disk, or a
    ValueError), else None, so that every rank can be told before any rank stops."""
    try:
        step()
    except (OSError, ValueError) as err:
        return str(err) or type(err).__name__
    return None


def _check_out(out: Path, manifest: dict[str, Any], overwrite: bool) -> bool:
    """Whether ``out`` starts fresh (missing, empty, or replaced with ``overwrite``); a
    ValueError for a folder this run may not continue."""
    if not out.exists() and not out.is_symlink():
        return True
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; choose another --out")
    if overwrite:
        return True
    if not (out / fmt.MANIFEST_NAME).is_file():
        if any(not p.name.startswith(f".{fmt.MANIFEST_NAME}.tmp-") for p in out.iterdir()):
            raise ValueError(f"{out} holds files but no {fmt.MANIFEST_NAME}: not a vqtok token "
                             f"dataset; choose another --out, or pass --overwrite to replace it")
        return True
    try:
        old = fmt.read_manifest(out)
    except ValueError as err:
        raise ValueError(f"{err}; pass --overwrite to replace {out}") from None
    if old["run"] == manifest["run"]:
        return False
    if old["tokenizer"] != manifest["tokenizer"]:
        raise ValueError(f"{out} holds the tokens of another tokenizer (fingerprint "
                         f"{old['tokenizer']['fingerprint'][:12]}, this one "
                         f"{manifest['tokenizer']['fingerprint'][:12]}); choose another --out, "
                         f"or pass --overwrite to replace them")
    if old["shard_size"] != manifest["shard_size"]:
        raise ValueError(f"{out} was written with --shard-size {old['shard_size']}; rerun with "
                         f"it, or pass --overwrite to start again")
    if old["inputs"] != manifest["inputs"]:
        was, now = old["inputs"], manifest["inputs"]
        raise ValueError(f"{out} was written from other inputs ({was['files']:,} files and "
                         f"{was['tars']:,} tars; now {now['files']:,} and {now['tars']:,}, or "
                         f"their names or sizes changed); rerun with the same inputs, or pass "
                         f"--overwrite to start again")
    raise ValueError(f"{out} was written by another run; pass --overwrite to start again")


def _prepare(out: Path, manifest: dict[str, Any], fresh: bool) -> None:
    """Rank 0: an empty dataset folder with its unfinished manifest (fresh), or the
    existing one kept."""
    if not fresh:
        return
    if out.is_dir() and any(out.iterdir()):  # --overwrite: replace it
        shutil.rmtree(out)
    fmt.write_manifest(out, manifest)  # first: a folder with a manifest is a dataset
    (out / fmt.SHARDS_DIR).mkdir(exist_ok=True)


_SHARD_FILE = re.compile(r"(\d{6})-(\d{5})\.parquet")


def _done_parts(out: Path, run: str) -> dict[int, dict[int, dict[str, Any]]]:
    """``{source: {part: footer}}`` of the complete shards of this run in ``out``. A
    file under a shard's name is whole (it was renamed there after fsync); a shard of
    another run cannot be there (the manifest was checked), so one is an error."""
    done: dict[int, dict[int, dict[str, Any]]] = {}
    folder = out / fmt.SHARDS_DIR
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = _SHARD_FILE.fullmatch(path.name)
        if match is None:
            continue
        meta = fmt.read_shard_meta(path)
        if meta["run"] != run or (meta["source"], meta["part"]) != tuple(map(int, match.groups())):
            raise ValueError(f"{path}: a shard of another run or place; pass --overwrite to "
                             f"start again")
        done.setdefault(meta["source"], {})[meta["part"]] = meta
    return done


def _source_done(source: Source, done: dict[int, dict[int, dict[str, Any]]]) -> bool:
    """Whether every part of ``source`` is on disk: parts ``0..L`` with ``L`` the last."""
    parts = done.get(source.index, {})
    last = [p for p, meta in parts.items() if meta["last"]]
    return bool(last) and all(p in parts for p in range(last[0] + 1))


def _finish(out: Path, manifest: dict[str, Any], sources: list[Source]) -> None:
    """Rank 0, once every rank is done: the manifest of all shards, ``complete: true``."""
    done = _done_parts(out, manifest["run"])
    missing = [s.index for s in sources if not _source_done(s, done)]
    if missing:
        raise OSError(f"{len(missing)} sources have no complete shards (the first: source "
                      f"{missing[0]})")
    grids: dict[tuple[int, ...], int] = {}
    shards, failed = [], []
    for source in sources:
        for part in sorted(done[source.index]):
            meta = done[source.index][part]
            name = fmt.shard_name(source.index, part)
            path = out / name
            shards.append({"file": name, "source": source.index, "part": part,
                           "rows": meta["rows"], "failed": len(meta["failed"]),
                           "tokens": meta["tokens"], "bytes": path.stat().st_size,
                           "sha256": fmt.file_sha256(path)})
            failed += meta["failed"]
            for grid in meta["grids"]:
                grids[tuple(grid["shape"])] = grids.get(tuple(grid["shape"]), 0) + grid["count"]
    fmt.write_manifest(out, {
        **manifest, "complete": True, "shards": shards, "failed": failed,
        "rows": sum(s["rows"] for s in shards), "tokens": sum(s["tokens"] for s in shards),
        "grids": [{"shape": list(shape), "count": n} for shape, n in sorted(grids.items())],
    })


def launch(devices: str | int, num_nodes: int, strategy: str, accelerator: str
           ) -> tuple[int, int, Gather, torch.device]:
    """Start this command's processes with Lightning Fabric, as ``vqtok fit``'s trainer
    takes them (``--devices 2 --accelerator cpu --strategy ddp``; under a cluster's
    launcher, such as SLURM or torchrun, Fabric joins the processes it started instead):
    ``(rank, world size, gather, this rank's device)``."""
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                    strategy=strategy)
    fabric.launch()
    if fabric.world_size == 1:
        return 0, 1, _single, fabric.device

    def gather(value: Any) -> list[Any]:
        values: list[Any] = [None] * fabric.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    return fabric.global_rank, fabric.world_size, gather, fabric.device
