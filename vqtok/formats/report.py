"""``report.json``: the machine-readable half of a ``vqtok report`` (docs/formats.md#report),
format version 1 (:data:`SPEC`).

Written beside the HTML (``report.html`` -> ``report.json``). Every key below is always
present; ``null`` only where the type says so. Floats are finite.

::

    {
      "format": "vqtok.report",
      "format_version": 1,
      "thresholds": {                       # the verdict rules (docs/algorithms.md#verdict)
        "collapsed_below": 0.25,            #   used / measurable codes below: collapsed
        "partial_below": 0.8,               #   below: partly collapsed
        "skewed_entropy_below": 0.7,        #   log(perplexity)/log(measurable) below: skewed
        "duplicate_rel_tol": 1e-06          #   nearest other code within tol * RMS norm
      },
      "runs": [{
        "name": str,                        # "photos_fsq/version_0", or "<tokenizer> on <data>"
        "path": str,                        # the run directory (or tokenizer directory)
        "source": "history" | "measured",   # recorded in training / measured by --data
        "quantizer": str,                   # class path of the quantizer
        "quantizer_config": str,            # its settings, e.g. "codebook_size=1000, dim=16"
        "codebook_size": int,               # K
        "verdict": {"level": "collapsed" | "partly collapsed" | "skewed" | "healthy",
                    "text": str},           # e.g. "collapsed: 93% of 16,384 codes never used ..."
        "final": {                          # the last validation run (from its counts)
          "step": int | null, "epoch": int | null,          # null when measured
          "usage": float,                   # used / K, in [1/K, 1]
          "used_codes": int, "dead_codes": int,
          "perplexity": float,              # in [1, K]
          "normalized_entropy": float,      # log(perplexity) / log K, in [0, 1]
          "psnr": float | null, "ssim": float | null,       # dB; in [-1, 1] pixel space
          "total_ids": int                  # validation tokens counted
        },
        "validations": [{                   # every validation run, in order
          "step": int | null, "epoch": int | null, "usage": float, "perplexity": float,
          "dead_codes": int, "normalized_entropy": float, "psnr": float | null,
          "ssim": float | null, "total_ids": int}],
        "train": [{                         # per training batch, not the codebook's usage
          "step": int, "epoch": int, "batch_usage": float, "batch_perplexity": float,
          "batch_ids": int}],
        "codebook": {                       # null values when no tokenizer was found
          "tokenizer": str | null,          # the exported tokenizer the codes came from
          "duplicate_codes": int | null,    # among the measured codes
          "nn_codes_measured": int | null,  # codes whose nearest neighbour was measured
          "nn_distance_min": float | null,
          "nn_distance_median": float | null
        },
        "samples": {"source": str | null, "count": int},   # reconstructed images
        "notes": [str],                     # what was skipped, and why
        "eval": {                           # only when the run directory holds an eval.json
          "path": str, "data": str, "size": int, "images": int,   # (vqtok eval, eval.md)
          "rfid": float | null, "lpips": float | null, "psnr": float | null,
          "ssim": float, "usage": float, "perplexity": float, "tokens": int}
      }],
      "comparison": {
        "runs": int,
        "same_codebook_size": bool,
        "notes": [str]
      }
    }
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqtok.formats.jsonfile import write_json
from vqtok.formats.schema import (
    Bool,
    Const,
    Float,
    Int,
    ListOf,
    Nullable,
    Obj,
    OneOf,
    Str,
    Version,
    validate,
)

FORMAT = "vqtok.report"
FORMAT_VERSION = 1

_VALIDATION = {"step": Nullable(Int(min=0)), "epoch": Nullable(Int(min=0)),
               "usage": Float(min=0, max=1), "perplexity": Float(), "dead_codes": Int(min=0),
               "normalized_entropy": Float(), "psnr": Nullable(Float()),
               "ssim": Nullable(Float()), "total_ids": Int(min=0)}
_RUN = Obj({
    "name": Str(), "path": Str(), "source": OneOf("history", "measured"), "quantizer": Str(),
    "quantizer_config": Str(), "codebook_size": Int(min=1),
    "verdict": Obj({"level": OneOf("collapsed", "partly collapsed", "skewed", "healthy"),
                    "text": Str()}),
    "final": Obj({**_VALIDATION, "used_codes": Int(min=0)}),
    "validations": ListOf(Obj(_VALIDATION)),
    "train": ListOf(Obj({"step": Int(min=0), "epoch": Int(min=0), "batch_usage": Float(),
                         "batch_perplexity": Float(), "batch_ids": Int(min=0)})),
    "codebook": Obj({"tokenizer": Nullable(Str()), "duplicate_codes": Nullable(Int(min=0)),
                     "nn_codes_measured": Nullable(Int(min=0)),
                     "nn_distance_min": Nullable(Float()),
                     "nn_distance_median": Nullable(Float())}),
    "samples": Obj({"source": Nullable(Str()), "count": Int(min=0)}),
    "notes": ListOf(Str()),
}, optional={"eval": Obj({
    "path": Str(), "data": Str(), "size": Int(min=1), "images": Int(min=1),
    "rfid": Nullable(Float()), "lpips": Nullable(Float()), "psnr": Nullable(Float()),
    "ssim": Float(), "usage": Float(min=0, max=1), "perplexity": Float(), "tokens": Int(min=1)})})
EVAL_KEYS = ("path", "data", "size", "images", "rfid", "lpips", "psnr", "ssim", "usage",
             "perplexity", "tokens")
"""What a report shows of a run's ``eval.json``."""
SPEC = Obj({
    "format": Const(FORMAT, "a vqtok report"),
    "format_version": Version(FORMAT_VERSION),
    "thresholds": Obj({"collapsed_below": Float(), "partial_below": Float(),
                       "skewed_entropy_below": Float(), "duplicate_rel_tol": Float()}),
    "runs": ListOf(_RUN),
    "comparison": Obj({"runs": Int(min=0), "same_codebook_size": Bool(), "notes": ListOf(Str())}),
})


def validate_report(doc: Any, source: str = "report") -> None:
    """Raise :class:`~vqtok.formats.schema.FormatError` (a ValueError) naming the first key
    of ``doc`` that does not follow :data:`SPEC`."""
    validate(doc, SPEC, source)


def write_report(path: Path, doc: dict[str, Any]) -> Path:
    """Validate ``doc`` and write it to ``path`` atomically."""
    validate_report(doc)
    return write_json(path, doc, "report", indent=1)
