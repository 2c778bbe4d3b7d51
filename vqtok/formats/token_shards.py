"""A sharded token dataset (docs/formats.md#token-shards): what ``vqtok encode --shard-size N``
writes, a folder that a trainer streams shard by shard, with vqtok or without it (any
Parquet reader: pyarrow, Hugging Face ``datasets``, polars, DuckDB)::

    DIR/
      manifest.json                    MANIFEST: the tokenizer, the inputs, every shard
      shards/000000-00000.parquet      source 0, part 0: one row per item
      shards/000001-00000.parquet      ...

A *source* is a block of ``N`` loose input files or one input tar; its *parts* hold ``N``
input items each (the last one fewer), so which shard holds an item depends on the inputs
alone, never on how many processes wrote them or in which order. A shard is written
whole to a temporary sibling, fsynced and renamed into place (:mod:`vqtok.formats.atomic`):
a file under a shard's name is complete. Its footer carries :data:`SHARD_META` (which
items it covers, which failed, the run it belongs to). The manifest lists the shards with
their sizes and SHA-256 once a run has written all of them (``complete: true``).

Rows (:data:`COLUMNS`): ``name``, ``source``, ``caption`` (null when there is none),
``height``, ``width``, ``frames`` (null for an image), ``shape`` (the id grid: ``[h, w]``,
``[h, w, S]``, or ``[t, h, w]`` for a clip) and ``ids``, the grid row-major in the smallest
unsigned type that holds the codebook (:func:`id_dtype`).

Needs the ``shards`` extra (pyarrow): ``pip install vqtok[shards]``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqtok.extras import require_extra
from vqtok.formats import schema
from vqtok.formats.atomic import atomic_write_bytes
from vqtok.formats.jsonfile import read_json, write_json
from vqtok.formats.schema import FormatError, validate

FORMAT = "vqtok.token_shards"
FORMAT_VERSION = 1
SHARD_FORMAT = "vqtok.token_shard"
MANIFEST_NAME = "manifest.json"
SHARDS_DIR = "shards"
META_KEY = b"vqtok"
"""The key of a shard's Parquet footer metadata that holds :data:`SHARD_META`."""

COLUMNS = ("name", "source", "caption", "height", "width", "frames", "shape", "ids")

FAILURE = schema.ListOf(schema.Str())  # [source, reason]

SHARD_META = schema.Obj({
    "format": schema.Const(SHARD_FORMAT, "a shard written by `vqtok encode --shard-size`"),
    "format_version": schema.Version(FORMAT_VERSION),
    "run": schema.Str(),
    "source": schema.Int(min=0),
    "part": schema.Int(min=0),
    "first": schema.Int(min=0),
    "items": schema.Int(min=0),
    "last": schema.Bool(),
    "rows": schema.Int(min=0),
    "tokens": schema.Int(min=0),
    "grids": schema.ListOf(schema.Obj({"shape": schema.ListOf(schema.Int(min=1)),
                                       "count": schema.Int(min=1)})),
    "failed": schema.ListOf(FAILURE),
})
"""A shard's footer: the run it belongs to (:func:`run_id`), its source and part, the
first item of the source it covers and how many input items (rows plus failures),
whether it is the source's last part, its rows, ids and grid shapes (each shape and how
many rows have it), and each failed item as ``[source, reason]``."""

TOKENIZER = schema.Obj({
    "fingerprint": schema.Str(), "codebook_size": schema.Int(min=1),
    "downsample_factor": schema.Int(min=1), "num_stages": schema.Nullable(schema.Int(min=1)),
    "temporal_factor": schema.Nullable(schema.Int(min=1)), "kind": schema.OneOf("image", "video"),
})
SHARD_ENTRY = schema.Obj({
    "file": schema.Str(), "source": schema.Int(min=0), "part": schema.Int(min=0),
    "rows": schema.Int(min=0), "failed": schema.Int(min=0), "tokens": schema.Int(min=0),
    "bytes": schema.Int(min=1), "sha256": schema.Str(),
})
MANIFEST = schema.Obj({
    "format": schema.Const(FORMAT, "a token dataset written by `vqtok encode --shard-size`"),
    "format_version": schema.Version(FORMAT_VERSION),
    "vqtok_version": schema.Str(),
    "complete": schema.Bool(),
    "run": schema.Str(),
    "tokenizer": TOKENIZER,
    "inputs": schema.Obj({"files": schema.Int(min=0), "tars": schema.Int(min=0),
                          "sources": schema.Int(min=0), "sha256": schema.Str()}),
    "shard_size": schema.Int(min=1),
    "id_dtype": schema.OneOf("uint8", "uint16", "uint32", "uint64"),
    "rows": schema.Int(min=0),
    "tokens": schema.Int(min=0),
    "grids": schema.ListOf(schema.Obj({"shape": schema.ListOf(schema.Int(min=1)),
                                       "count": schema.Int(min=1)})),
    "failed": schema.ListOf(FAILURE),
    "shards": schema.ListOf(SHARD_ENTRY),
})
"""``manifest.json``; ``rows``, ``tokens``, ``grids`` (each id grid shape and how many
rows have it) and ``failed`` sum the shards, listed in (source, part) order."""


def require_pyarrow() -> Any:
    """pyarrow's Parquet module, or a one-line :class:`~vqtok.extras.MissingExtraError`."""
    return require_extra("shards", "a sharded token dataset", "pyarrow", "pyarrow.parquet")[1]


def id_dtype(codebook_size: int) -> np.dtype:
    """The smallest unsigned integer type whose values hold ids in ``[0, codebook_size)``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def shard_name(source: int, part: int) -> str:
    """``shards/SSSSSS-PPPPP.parquet``, relative to the dataset folder."""
    return f"{SHARDS_DIR}/{source:06d}-{part:05d}.parquet"


def run_id(tokenizer: dict[str, Any], inputs_sha256: str, shard_size: int) -> str:
    """What a dataset's content depends on, as one SHA-256: the tokenizer's facts and
    fingerprint, the input list and the shard size."""
    text = json.dumps([tokenizer, inputs_sha256, shard_size], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class ShardRows:
    """The rows of one shard, in item order."""

    names: list[str]
    sources: list[str]
    captions: list[str | None]
    sizes: list[tuple[int, int]]
    """Original (height, width) in pixels (of each frame, for a clip)."""
    frames: list[int | None]
    ids: list[np.ndarray]
    """Each item's id grid, ``(h, w)``, ``(h, w, S)`` or ``(t, h, w)``."""

    def __len__(self) -> int:
        return len(self.names)


def shard_bytes(rows: ShardRows, meta: dict[str, Any], dtype: np.dtype) -> bytes:
    """A shard's Parquet file (zstd) of ``rows``, with ``meta`` (:data:`SHARD_META`) in
    its footer. The same rows and meta give the same bytes."""
    validate(meta, SHARD_META, "shard metadata")
    pq = require_pyarrow()
    import pyarrow as pa

    id_type = pa.from_numpy_dtype(dtype)
    table = pa.table({
        "name": pa.array(rows.names, pa.string()),
        "source": pa.array(rows.sources, pa.string()),
        "caption": pa.array(rows.captions, pa.string()),
        "height": pa.array([h for h, _ in rows.sizes], pa.int32()),
        "width": pa.array([w for _, w in rows.sizes], pa.int32()),
        "frames": pa.array(rows.frames, pa.int32()),
        "shape": pa.array([list(g.shape) for g in rows.ids], pa.list_(pa.int32())),
        "ids": pa.array([g.reshape(-1).astype(dtype) for g in rows.ids], pa.list_(id_type)),
    })
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_shard(folder: Path, rows: ShardRows, meta: dict[str, Any], dtype: np.dtype) -> Path:
    """Write a shard atomically (temporary sibling, fsync, rename) under
    :func:`shard_name`; returns its path."""
    return atomic_write_bytes(folder / shard_name(meta["source"], meta["part"]),
                              shard_bytes(rows, meta, dtype))


def read_shard_meta(path: Path) -> dict[str, Any]:
    """A shard's :data:`SHARD_META`, from its footer alone; a FormatError naming the file
    when it has none or it is not a Parquet file."""
    pq = require_pyarrow()
    try:
        metadata = pq.read_schema(path).metadata or {}
        meta = json.loads(metadata[META_KEY])
    except (OSError, KeyError, ValueError) as err:
        raise FormatError(f"{path}: not a vqtok token shard ({type(err).__name__}: {err})"
                          ) from None
    validate(meta, SHARD_META, str(path))
    return meta


def read_shard(path: Path) -> ShardRows:
    """A shard's rows; each id grid gets its ``shape`` back (int64)."""
    pq = require_pyarrow()
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as err:
        raise FormatError(f"{path}: cannot read the shard ({err})") from None
    if tuple(table.column_names) != COLUMNS:
        raise FormatError(f"{path}: columns {table.column_names}, expected {list(COLUMNS)}")
    data = {name: table.column(name).to_pylist() for name in COLUMNS if name != "ids"}
    ids = table.column("ids").combine_chunks()
    flat = ids.values.to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = ids.offsets.to_numpy()
    grids = []
    for a, b, shape in zip(offsets[:-1], offsets[1:], data["shape"]):
        if int(np.prod(shape)) != b - a:
            raise FormatError(f"{path}: a row's ids ({b - a}) do not fill its shape {shape}")
        grids.append(flat[a:b].reshape(shape))
    return ShardRows(names=data["name"], sources=data["source"], captions=data["caption"],
                     sizes=list(zip(data["height"], data["width"])), frames=data["frames"],
                     ids=grids)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Validate and write ``manifest.json`` atomically."""
    validate(manifest, MANIFEST, f"{folder / MANIFEST_NAME}")
    return write_json(folder / MANIFEST_NAME, manifest, "token dataset manifest")


def read_manifest(folder: Path) -> dict[str, Any]:
    """A dataset's validated manifest."""
    path = Path(folder) / MANIFEST_NAME
    manifest = read_json(path)
    validate(manifest, MANIFEST, str(path))
    return manifest


class TokenShards:
    """A complete token dataset, read shard by shard: ``for rows in TokenShards(dir)``.

    Opening checks the manifest (complete, every shard present with its size); ``verify``
    also reads every shard, checking its SHA-256, footer and row counts against the
    manifest and each id against the codebook."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if not self.manifest["complete"]:
            raise FormatError(f"{self.folder}: an unfinished token dataset (its manifest "
                              f"says complete: false); rerun the `vqtok encode` that wrote it")
        for entry in self.manifest["shards"]:
            path = self.folder / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                raise FormatError(f"{path}: missing or not the {entry['bytes']} bytes the "
                                  f"manifest records")

    @property
    def codebook_size(self) -> int:
        return int(self.manifest["tokenizer"]["codebook_size"])

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    def paths(self) -> list[Path]:
        return [self.folder / entry["file"] for entry in self.manifest["shards"]]

    def __iter__(self) -> Iterator[ShardRows]:
        for path in self.paths():
            yield read_shard(path)

    def verify(self) -> None:
        """FormatError naming the first shard that disagrees with the manifest."""
        rows = tokens = 0
        for entry in self.manifest["shards"]:
            path = self.folder / entry["file"]
            if file_sha256(path) != entry["sha256"]:
                raise FormatError(f"{path}: SHA-256 differs from the manifest's")
            meta = read_shard_meta(path)
            if meta["run"] != self.manifest["run"] or len(meta["failed"]) != entry["failed"]:
                raise FormatError(f"{path}: footer disagrees with the manifest")
            shard = read_shard(path)
            count = sum(int(g.size) for g in shard.ids)
            if len(shard) != entry["rows"] or count != entry["tokens"]:
                raise FormatError(f"{path}: {len(shard)} rows and {count} ids, the manifest "
                                  f"records {entry['rows']} and {entry['tokens']}")
            if any(g.size and (g.min() < 0 or g.max() >= self.codebook_size) for g in shard.ids):
                raise FormatError(f"{path}: ids outside [0, {self.codebook_size})")
            rows, tokens = rows + len(shard), tokens + count
        if (rows, tokens) != (self.manifest["rows"], self.manifest["tokens"]):
            raise FormatError(f"{self.folder}: the shards hold {rows} rows and {tokens} ids, "
                              f"the manifest records {self.manifest['rows']} and "
                              f"{self.manifest['tokens']}")
