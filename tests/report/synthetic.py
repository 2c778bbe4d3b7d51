"""Hand-written codebook histories with known answers (independent of the callback's
writer), in the layout documented in vqtok/training/callbacks.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def stats_by_hand(counts: np.ndarray) -> dict[str, float]:
    """usage, perplexity, dead codes, normalised entropy in float64 (docs/algorithms.md#codebook-usage)."""
    k = counts.size
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log(p)).sum())
    return {"usage": (counts > 0).sum() / k, "perplexity": math.exp(entropy),
            "dead_codes": int((counts == 0).sum()),
            "normalized_entropy": entropy / math.log(k) if k > 1 else 1.0}


def write_history(run_dir: Path, counts: np.ndarray, steps: list[int] | None = None,
                  psnr: float | None = 20.0, train: list[dict] | None = None) -> Path:
    """Write codebook_history.json + .npz for ``counts`` (V, K) into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    counts = np.asarray(counts, dtype=np.int64)
    steps = steps or [100 * (v + 1) for v in range(counts.shape[0])]
    validations = []
    for v, row in enumerate(counts):
        s = stats_by_hand(row)
        validations.append({"step": steps[v], "epoch": v, "usage": float(s["usage"]),
                            "perplexity": s["perplexity"], "dead_codes": s["dead_codes"],
                            "normalized_entropy": s["normalized_entropy"], "psnr": psnr,
                            "ssim": None if psnr is None else 0.5, "total_ids": int(row.sum())})
    if train is None:
        train = [{"step": st, "epoch": 0, "batch_usage": 0.01, "batch_perplexity": 3.0,
                  "batch_ids": 512} for st in [1, *steps]]
    doc = {"format": "vqtok.codebook_history", "format_version": 1,
           "codebook_size": int(counts.shape[1]), "quantizer": "vqtok.quantizers.vq.VectorQuantizer",
           "quantizer_config": f"codebook_size={counts.shape[1]}, dim=8",
           "counts_file": "codebook_history.npz", "every_n_steps": 50,
           "validations": validations, "train": train}
    (run_dir / "codebook_history.json").write_text(json.dumps(doc))
    np.savez(run_dir / "codebook_history.npz", counts=counts,
             steps=np.array(steps, dtype=np.int64))
    return run_dir


def collapsed_counts(k: int = 1000, used: int = 10, runs: int = 3) -> np.ndarray:
    """(runs, K): the first ``used`` codes take 100 ids each at every validation run."""
    counts = np.zeros((runs, k), dtype=np.int64)
    counts[:, :used] = 100
    return counts


def uniform_counts(k: int = 256, per_code: int = 7, runs: int = 2) -> np.ndarray:
    return np.full((runs, k), per_code, dtype=np.int64)
