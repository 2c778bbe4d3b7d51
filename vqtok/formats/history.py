"""The codebook history of a training run (docs/formats.md#codebook-history): what the
``CodebookHistory`` callback writes into the run directory and ``vqtok report`` reads.

Two files; the ``.npz`` is written before the ``.json``, each atomically, so a crash
between the two leaves an ``.npz`` with one extra row, which readers ignore::

    codebook_history.json                       (SPEC)
      {"format": "vqtok.codebook_history", "format_version": 1,
       "codebook_size": K,                         # int >= 1, codes of each stage
       "num_stages": S,                            # optional, 1 when absent
       "quantizer": "vqtok.quantizers.fsq.FSQ",    # class path of the quantizer
       "quantizer_config": "levels=[8, 5, 5, 5], codebook_size=1000, dim=16",
       "counts_file": "codebook_history.npz",
       "every_n_steps": 50,
       "validations": [                            # one per validation run, in order
         {"step": int, "epoch": int, "usage": float, "perplexity": float,
          "dead_codes": int, "normalized_entropy": float,
          "psnr": float | null, "ssim": float | null, "total_ids": int}],
       "train": [                                  # the first step, then every N steps
         {"step": int, "epoch": int, "batch_usage": float, "batch_perplexity": float,
          "batch_ids": int}]}

    codebook_history.npz                        (COUNTS_SPEC; no pickled objects)
      counts  (V, S K) int64 row v: per-code counts over the whole validation set at
                             validation run v, summed over all ranks; stage s's code k
                             is column s K + k
      steps   (V,)   int64   the global step of each row

The train curve is *per batch*: the usage and perplexity of the ids of one training batch,
which can never exceed ``batch_ids / K``; collapse is read from the validation counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vqtok.formats import schema
from vqtok.formats.jsonfile import read_json, write_json
from vqtok.formats.npzfile import read_npz, write_npz
from vqtok.formats.schema import FormatError, validate

FORMAT = "vqtok.codebook_history"
FORMAT_VERSION = 1
JSON_NAME = "codebook_history.json"
COUNTS_NAME = "codebook_history.npz"

VALIDATION = schema.Obj({
    "step": schema.Int(min=0), "epoch": schema.Int(min=0),
    "usage": schema.Float(min=0, max=1), "perplexity": schema.Float(),
    "dead_codes": schema.Int(min=0), "normalized_entropy": schema.Float(),
    "psnr": schema.Nullable(schema.Float()), "ssim": schema.Nullable(schema.Float()),
    "total_ids": schema.Int(min=1),
})
"""One validation run's metrics (docs/algorithms.md#codebook-usage)."""
TRAIN = schema.Obj({
    "step": schema.Int(min=0), "epoch": schema.Int(min=0),
    "batch_usage": schema.Float(min=0, max=1), "batch_perplexity": schema.Float(),
    "batch_ids": schema.Int(min=1),
})
"""One point of the per-batch training curve."""

SPEC = schema.Obj({
    "format": schema.Const(FORMAT, "a vqtok codebook history"),
    "format_version": schema.Version(FORMAT_VERSION),
    "codebook_size": schema.Int(min=1), "quantizer": schema.Str(),
    "quantizer_config": schema.Str(), "counts_file": schema.Str(nonempty=True),
    "every_n_steps": schema.Int(min=1), "validations": schema.ListOf(VALIDATION),
    "train": schema.ListOf(TRAIN),
}, optional={"num_stages": schema.Int(min=1, max=256)})
COUNTS_SPEC = schema.Obj({"counts": schema.Array("iu", (None, None), min=0),
                          "steps": schema.Array("iu", (None,))})


def write_history(directory: Path, doc: dict[str, Any], counts: np.ndarray,
                  steps: np.ndarray) -> None:
    """Write ``counts (V, K)`` and ``steps (V,)``, then the JSON ``doc`` (module doc)."""
    validate(doc, SPEC, JSON_NAME)
    validate({"counts": counts, "steps": steps}, COUNTS_SPEC, COUNTS_NAME)
    write_npz(directory / doc["counts_file"], {"counts": counts, "steps": steps})
    write_json(directory / JSON_NAME, doc, "codebook history", indent=1)


def read_history(directory: Path) -> tuple[dict[str, Any], np.ndarray]:
    """``(JSON document, counts (V, S K) int64)`` of the history in ``directory``, validated:
    V equals the number of validation runs and the rows' steps match theirs. Raises
    :class:`~vqtok.formats.schema.FormatError` naming the file and the problem."""
    json_path = directory / JSON_NAME
    doc = read_json(json_path)
    validate(doc, SPEC, str(json_path))
    if Path(doc["counts_file"]).name != doc["counts_file"]:
        raise FormatError(f"{json_path}: counts_file must be a file name in the run directory, "
                          f"got {doc['counts_file']!r}")
    if not doc["validations"]:
        raise FormatError(f"{json_path}: holds no validation run yet")
    counts_path = directory / doc["counts_file"]
    if not counts_path.is_file():
        raise FormatError(f"{counts_path}: the counts file named by {JSON_NAME} is missing")
    arrays = read_npz(counts_path, "counts file", keys=COUNTS_SPEC.keys)
    validate(arrays, COUNTS_SPEC, str(counts_path))
    counts, steps = arrays["counts"].astype(np.int64), arrays["steps"].astype(np.int64)
    slots = doc["codebook_size"] * doc.get("num_stages", 1)
    if counts.shape[1] != slots:
        raise FormatError(f"{counts_path}: counts have {counts.shape[1]} columns but "
                          f"{json_path} says codebook_size = {doc['codebook_size']} and "
                          f"num_stages = {doc.get('num_stages', 1)}")
    n = len(doc["validations"])
    if counts.shape[0] < n or steps.shape[0] != counts.shape[0] or (
            steps[:n].tolist() != [v["step"] for v in doc["validations"]]):
        raise FormatError(f"{counts_path}: its {counts.shape[0]} rows (steps "
                          f"{steps.tolist()[:8]}) do not match the {n} validation runs of "
                          f"{json_path}")
    empty = np.flatnonzero(counts[:n].sum(axis=1) == 0).tolist()
    if empty:
        raise FormatError(f"{counts_path}: rows {empty} count no code id (a validation run "
                          f"always counts some)")
    return doc, counts[:n]
