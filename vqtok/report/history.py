"""Reading the codebook history a training run left in its run directory.

The files and their layout are :mod:`vqtok.formats.history`, which validates them and
raises ``ValueError`` naming the file and the problem: a missing history, invalid JSON,
an unknown format or version, counts of the wrong shape, dtype or sign, or rows that do
not match the JSON. The ``.npz`` is read with ``allow_pickle=False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqtok.formats import history as history_format

TOKENIZER_SUBDIR = "tokenizer"
"""Where ``vqtok fit`` exports the tokenizer inside the run directory."""

_FLOAT_KEYS = ("usage", "perplexity", "normalized_entropy", "psnr", "ssim", "batch_usage",
               "batch_perplexity")


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
    num_stages: int = 1
    """S for a multi-stage quantizer: ``counts`` then has S K columns, stage s's code k at
    column s K + k."""

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
    if not (root / history_format.JSON_NAME).is_file():
        if (root / "config.yaml").is_file() or (root / "hparams.yaml").is_file():
            raise ValueError(
                f"{root}: no codebook history yet: it is written after each validation run, "
                f"and this run has not validated (or ran with --codebook_history null)")
        raise ValueError(
            f"{root}: no codebook history ({history_format.JSON_NAME} is missing). Train with "
            f"the CodebookHistory callback (on by default in `vqtok fit`), or measure an "
            f"exported tokenizer with `vqtok report --tokenizer DIR --data DATA`"
        )
    doc, counts = history_format.read_history(root)
    tokenizer = root / TOKENIZER_SUBDIR
    return RunHistory(
        name=run_name(root), path=root, codebook_size=doc["codebook_size"], counts=counts,
        validations=[_floats(r) for r in doc["validations"]],
        train=[_floats(r) for r in doc["train"]], quantizer=doc["quantizer"],
        quantizer_config=doc["quantizer_config"], every_n_steps=doc["every_n_steps"],
        source="history", tokenizer_dir=tokenizer if tokenizer.is_dir() else None,
        num_stages=doc.get("num_stages", 1),
    )


def _floats(record: dict[str, Any]) -> dict[str, Any]:
    """A record with its real-valued metrics as floats (JSON writes 1.0 as 1)."""
    return {k: float(v) if k in _FLOAT_KEYS and v is not None else v for k, v in record.items()}
