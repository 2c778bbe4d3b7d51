"""Reading the codebook history a training run left in its run directory.

The files and their layout are written by :class:`vqtok.training.callbacks.CodebookHistory`
(its module docstring is the format's reference). Reading validates everything and raises
``ValueError`` naming the file and the problem: a missing history, invalid JSON, an
unknown format or version, counts of the wrong shape, dtype or sign, or rows that do not
match the JSON. The ``.npz`` is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqtok.training.callbacks import HISTORY_FORMAT, HISTORY_JSON, HISTORY_VERSION

__all__ = ["TOKENIZER_SUBDIR", "RunHistory", "load_run", "run_name"]

TOKENIZER_SUBDIR = "tokenizer"
"""Where ``vqtok fit`` exports the tokenizer inside the run directory."""

_VALIDATION_KEYS = {
    "step": int, "epoch": int, "usage": float, "perplexity": float, "dead_codes": int,
    "normalized_entropy": float, "psnr": (float, type(None)), "ssim": (float, type(None)),
    "total_ids": int,
}
_TRAIN_KEYS = {"step": int, "epoch": int, "batch_usage": float, "batch_perplexity": float,
               "batch_ids": int}


@dataclass
class RunHistory:
    """One run's recorded (or measured) codebook usage.

    ``counts[v]`` are the per-code counts of validation run ``v``; ``validations[v]`` its
    metrics (keys as in the history JSON); ``train`` the per-batch curve.
    """

    name: str
    path: Path
    codebook_size: int
    counts: np.ndarray  # (V, K) int64
    validations: list[dict[str, Any]]
    train: list[dict[str, Any]] = field(default_factory=list)
    quantizer: str = ""
    quantizer_config: str = ""
    every_n_steps: int | None = None
    source: str = "history"  # "history": recorded in training; "measured": vqtok report --data
    tokenizer_dir: Path | None = None

    @property
    def final_counts(self) -> np.ndarray:
        """``(K,)`` counts of the last validation run."""
        return self.counts[-1]


def run_name(path: Path) -> str:
    """A short label: ``name/version_N`` for a logger's version folder, else the folder name."""
    path = path.resolve()
    if path.name.startswith("version_") and path.parent.name:
        return f"{path.parent.name}/{path.name}"
    return path.name or str(path)


def load_run(run_dir: str | Path) -> RunHistory:
    """Read ``RUN_DIR/codebook_history.json`` and its counts; see the module docstring."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ValueError(f"{root}: not a run directory (it does not exist or is not a folder)")
    json_path = root / HISTORY_JSON
    if not json_path.is_file():
        raise ValueError(
            f"{root}: no codebook history ({HISTORY_JSON} is missing). Train with the "
            f"CodebookHistory callback (on by default in `vqtok fit`), or measure an exported "
            f"tokenizer with `vqtok report --tokenizer DIR --data DATA`"
        )
    doc = _read_json(json_path)
    size = doc["codebook_size"]
    validations = [_check_record(r, _VALIDATION_KEYS, json_path, f"validations[{i}]")
                   for i, r in enumerate(doc["validations"])]
    train = [_check_record(r, _TRAIN_KEYS, json_path, f"train[{i}]")
             for i, r in enumerate(doc["train"])]
    if not validations:
        raise ValueError(f"{json_path}: holds no validation run yet")
    counts_path = root / doc["counts_file"]
    counts, steps = _read_counts(counts_path)
    if counts.shape[1] != size:
        raise ValueError(f"{counts_path}: counts have {counts.shape[1]} columns but "
                         f"{json_path} says codebook_size = {size}")
    n = len(validations)
    # A crash between the two atomic writes leaves one extra .npz row: ignore it.
    if counts.shape[0] < n or steps[:n].tolist() != [v["step"] for v in validations]:
        raise ValueError(f"{counts_path}: its {counts.shape[0]} rows (steps "
                         f"{steps.tolist()[:8]}) do not match the {n} validation runs of "
                         f"{json_path}")
    tokenizer = root / TOKENIZER_SUBDIR
    return RunHistory(
        name=run_name(root), path=root, codebook_size=size, counts=counts[:n],
        validations=validations, train=train, quantizer=doc["quantizer"],
        quantizer_config=doc["quantizer_config"], every_n_steps=doc["every_n_steps"],
        source="history", tokenizer_dir=tokenizer if tokenizer.is_dir() else None,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path}: unreadable or not valid JSON ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") != HISTORY_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path}: not a vqtok codebook history (format {got!r}, expected "
                         f"{HISTORY_FORMAT!r})")
    if doc.get("format_version") != HISTORY_VERSION:
        raise ValueError(f"{path}: unsupported format_version {doc.get('format_version')!r}; "
                         f"this vqtok reads {HISTORY_VERSION}")
    expected = {"codebook_size": int, "quantizer": str, "quantizer_config": str,
                "counts_file": str, "every_n_steps": int, "validations": list, "train": list}
    for key, kind in expected.items():
        value = doc.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
                f"{path}: {key!r} must be {kind.__name__}, got {value!r}")
    if doc["codebook_size"] < 1:
        raise ValueError(f"{path}: codebook_size must be >= 1, got {doc['codebook_size']}")
    if Path(doc["counts_file"]).name != doc["counts_file"]:
        raise ValueError(f"{path}: counts_file must be a file name in the run directory, got "
                         f"{doc['counts_file']!r}")
    return doc


def _check_record(record: Any, keys: dict[str, Any], path: Path, where: str) -> dict[str, Any]:
    if not isinstance(record, dict) or set(record) != set(keys):
        got = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path}: {where} must have the keys {sorted(keys)}, got {got}")
    out = {}
    for key, kind in keys.items():
        value = record[key]
        if isinstance(value, int) and not isinstance(value, bool) and kind in (float,):
            value = float(value)  # JSON writes 1.0 as 1
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
                f"{path}: {where}.{key} has the wrong type: {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{path}: {where}.{key} is not finite: {value!r}")
        out[key] = value
    return out


def _read_counts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(counts (V, K) int64, steps (V,) int64)`` from the ``.npz``."""
    if not path.is_file():
        raise ValueError(f"{path}: the counts file named by {HISTORY_JSON} is missing")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path}: unreadable or corrupt .npz ({err})") from err
    if set(arrays) != {"counts", "steps"}:
        raise ValueError(f"{path}: expected the arrays ['counts', 'steps'], got "
                         f"{sorted(arrays)}")
    counts, steps = arrays["counts"], arrays["steps"]
    if counts.ndim != 2 or counts.dtype.kind not in "iu" or counts.shape[0] < 1:
        raise ValueError(f"{path}: counts must be a (V, K) integer array with V >= 1, got "
                         f"shape {counts.shape} dtype {counts.dtype}")
    if steps.shape != (counts.shape[0],) or steps.dtype.kind not in "iu":
        raise ValueError(f"{path}: steps must be ({counts.shape[0]},) integers, got shape "
                         f"{steps.shape} dtype {steps.dtype}")
    if (counts < 0).any():
        raise ValueError(f"{path}: counts must be >= 0, got a minimum of {counts.min()}")
    empty = np.flatnonzero(counts.sum(axis=1) == 0).tolist()
    if empty:
        raise ValueError(f"{path}: rows {empty} count no code id (a validation run always "
                         f"counts some)")
    return counts.astype(np.int64), steps.astype(np.int64)
