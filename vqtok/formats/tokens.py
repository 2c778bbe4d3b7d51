"""Token ids of many images in one ``.npz`` (docs/formats.md#tokens), what ``vqtok encode``
writes and ``vqtok decode`` reads.

The file is read with ``allow_pickle=False``; every array is numeric or fixed-width
unicode (:data:`SPEC`):

=============================  ===========================================================
``format``                     ``"vqtok.tokens"``; ``format_version``: 1
``tokenizer_format_version``   the tokenizer directory format version
``codebook_size``              ids lie in ``[0, codebook_size)``; ``downsample_factor``: f
``names``                      ``(N,)`` source name per image: its path under the folder
                               that was given, or its file name; a plain relative path
``paths``                      ``(N,)`` source paths as found
``sizes``                      ``(N, 2)`` original (height, width) in pixels
``grids``                      ``(N, 2)`` token grid (h, w) = ceil(size / f)
``ids``                        ``(sum h*w*S,)`` int64, each image's grid row-major, concatenated
``num_stages``                 optional, S of a multi-stage tokenizer (then each grid is
                               ``(h, w, S)``); 1 when absent
``failed_paths``               ``(M,)`` files that could not be encoded; ``failed_reasons`` why
``frames``, ``temporal_factor``  optional, written by a video tokenizer: ``(N,)`` frames per
                               clip and the tokenizer's temporal factor; each clip's ids are
                               then a ``(t, h, w)`` grid, ``t = 1 + (frames - 1) /
                               temporal_factor``, with ``sizes`` and ``grids`` per frame
=============================  ===========================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vqtok.formats.npzfile import read_npz, write_npz
from vqtok.formats.outputs import check_plain_name
from vqtok.formats.schema import Array, Const, FormatError, Int, Obj, Scalar, Version, validate
from vqtok.formats.tokenizer_dir import FORMAT_VERSION as TOKENIZER_FORMAT_VERSION

FORMAT = "vqtok.tokens"
FORMAT_VERSION = 1


SPEC = Obj({
    "format": Scalar(Const(FORMAT, "a file written by `vqtok encode`")),
    "format_version": Scalar(Version(FORMAT_VERSION)),
    "tokenizer_format_version": Scalar(Int(min=1)),
    "codebook_size": Scalar(Int(min=1)),
    "downsample_factor": Scalar(Int(min=1)),
    "names": Array("U", (None,)),
    "paths": Array("U", (None,)),
    "sizes": Array("iu", (None, 2), min=1),
    "grids": Array("iu", (None, 2), min=1),
    "ids": Array("iu", (None,)),
    "failed_paths": Array("U", (None,)),
    "failed_reasons": Array("U", (None,)),
}, optional={"num_stages": Scalar(Int(min=1, max=256)), "frames": Array("iu", (None,), min=1),
             "temporal_factor": Scalar(Int(min=1))})
"""The arrays of a tokens file; how they relate is checked by :func:`read_tokens`."""


@dataclass
class TokenFile:
    """The content of a tokens ``.npz`` (module doc), validated."""

    names: list[str]
    sizes: list[tuple[int, int]]
    ids: list[np.ndarray]
    """One int64 ``(h, w)`` grid per image, ``(h, w, S)`` for a multi-stage tokenizer."""
    codebook_size: int
    downsample_factor: int
    num_stages: int = 1
    frames: list[int] | None = None
    """Frames per clip when a video tokenizer wrote the file (ids are then ``(t, h, w)``
    grids, ``sizes`` per frame); None for images."""
    temporal_factor: int | None = None


def write_tokens(path: str | os.PathLike[str], *, names: list[str], paths: list[str],
                 sizes: list[tuple[int, int]], grids: list[np.ndarray],
                 failed: list[tuple[str, str]], codebook_size: int,
                 downsample_factor: int, num_stages: int | None = None,
                 frames: list[int] | None = None, temporal_factor: int | None = None) -> Path:
    """Write a tokens file atomically; ``grids`` are the ``(h, w)`` id arrays per image
    (``(h, w, S)`` with ``num_stages = S``), or with ``frames`` and ``temporal_factor``
    (a video tokenizer) the ``(t, h, w)`` arrays per clip."""
    video = frames is not None
    if video != (temporal_factor is not None):
        raise ValueError("frames and temporal_factor go together (a video tokenizer's file)")
    arrays = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "tokenizer_format_version": np.array(TOKENIZER_FORMAT_VERSION, dtype=np.int64),
        "codebook_size": np.array(codebook_size, dtype=np.int64),
        "downsample_factor": np.array(downsample_factor, dtype=np.int64),
        "names": np.array(names, dtype=str),
        "paths": np.array(paths, dtype=str),
        "sizes": np.array(sizes, dtype=np.int64).reshape(-1, 2),
        "grids": np.array([g.shape[int(video):int(video) + 2] for g in grids],
                          dtype=np.int64).reshape(-1, 2),
        "ids": np.concatenate([g.reshape(-1) for g in grids] or [np.zeros(0)]).astype(np.int64),
        "failed_paths": np.array([p for p, _ in failed], dtype=str),
        "failed_reasons": np.array([r for _, r in failed], dtype=str),
    }
    if num_stages is not None:
        arrays["num_stages"] = np.array(num_stages, dtype=np.int64)
    if video:
        arrays["frames"] = np.array(frames, dtype=np.int64).reshape(-1)
        arrays["temporal_factor"] = np.array(temporal_factor, dtype=np.int64)
    return write_npz(path, arrays)


def read_tokens(npz: str | os.PathLike[str]) -> TokenFile:
    """Load and validate a tokens ``.npz``; ValueError naming the file and the problem."""
    path = Path(npz)
    arrays = read_npz(path, "tokens file", keys=SPEC.keys)
    validate(arrays, SPEC, str(path))

    def fail(problem: str) -> FormatError:
        return FormatError(f"{path}: {problem}")

    k, f = int(arrays["codebook_size"]), int(arrays["downsample_factor"])
    stages = int(arrays["num_stages"]) if "num_stages" in arrays else 1
    names, sizes, grids, ids = (arrays[key] for key in ("names", "sizes", "grids", "ids"))
    n = len(names)
    if sizes.shape[0] != n or grids.shape[0] != n:
        raise fail(f"inconsistent lengths: {n} names, {sizes.shape[0]} sizes, {grids.shape[0]} "
                   f"grids")
    if n and np.any(-(-sizes // f) != grids):
        raise fail(f"grids do not match sizes / downsample_factor {f}")
    video = "frames" in arrays
    if video != ("temporal_factor" in arrays):
        raise fail("frames and temporal_factor must both be present or both absent")
    latent = np.ones(n, dtype=np.int64)
    if video:
        frames, factor = arrays["frames"].astype(np.int64), int(arrays["temporal_factor"])
        if frames.shape[0] != n:
            raise fail(f"inconsistent lengths: {n} names, {frames.shape[0]} frame counts")
        if n and np.any((frames - 1) % factor):
            raise fail(f"frame counts must be 1 + {factor}k, got {sorted(set(frames.tolist()))}")
        latent = 1 + (frames - 1) // factor
    counts = grids.prod(axis=1) * latent * stages
    if counts.sum() != ids.size:
        raise fail(f"ids hold {ids.size} values but the grids need {int(counts.sum())}")
    if ids.size and (ids.min() < 0 or ids.max() >= k):
        raise fail(f"ids must lie in [0, {k}), got values in [{ids.min()}, {ids.max()}]")
    for name in names:
        check_plain_name(str(name), str(path))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    shapes = [((int(t),) if video else ()) + tuple(int(v) for v in g)
              + ((stages,) if "num_stages" in arrays else ()) for t, g in zip(latent, grids)]
    return TokenFile(
        names=[str(s) for s in names],
        sizes=[(int(h), int(w)) for h, w in sizes],
        ids=[ids[a:b].astype(np.int64).reshape(shape)
             for a, b, shape in zip(offsets[:-1], offsets[1:], shapes)],
        codebook_size=k,
        downsample_factor=f,
        num_stages=stages,
        frames=[int(t) for t in arrays["frames"]] if video else None,
        temporal_factor=int(arrays["temporal_factor"]) if video else None,
    )


def int64_ids(ids: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Token ids given to a tokenizer's ``decode`` (a torch tensor or numpy array of any
    integer dtype) as an int64 CPU tensor; a ValueError for anything else."""
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind not in "iu":
            raise ValueError(f"expected integer token ids, got numpy dtype {ids.dtype}")
        ids = torch.from_numpy(ids.astype(np.int64))
    if not isinstance(ids, torch.Tensor):
        raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
            f"expected token ids as a tensor or numpy array, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"expected integer token ids, got dtype {ids.dtype}")
    return ids.to("cpu", torch.int64)


def check_ids_in_range(ids: torch.Tensor, codebook_size: int) -> None:
    """A ValueError naming the values found unless every id lies in ``[0, codebook_size)``."""
    if ids.numel() and (ids.min() < 0 or ids.max() >= codebook_size):
        raise ValueError(f"token ids must lie in [0, {codebook_size}), got values in "
                         f"[{int(ids.min())}, {int(ids.max())}]")
