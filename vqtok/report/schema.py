"""``report.json``: the machine-readable half of a ``vqtok report`` (format version 1).

Written beside the HTML (``report.html`` -> ``report.json``). Every key below is always
present; ``null`` only where the type says so. Floats are finite.

::

    {
      "format": "vqtok.report",
      "format_version": 1,
      "thresholds": {                       # the verdict rules (vqtok.report.analysis)
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
        "notes": [str]                      # what was skipped, and why
      }],
      "comparison": {
        "runs": int,
        "same_codebook_size": bool,
        "notes": [str]
      }
    }
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["REPORT_FORMAT", "REPORT_VERSION", "validate_report"]

REPORT_FORMAT = "vqtok.report"
REPORT_VERSION = 1

_NONE = type(None)
_OPT_INT = (int, _NONE)
_OPT_FLOAT = (float, _NONE)
_LEVELS = frozenset({"collapsed", "partly collapsed", "skewed", "healthy"})
_VALIDATION = {"step": _OPT_INT, "epoch": _OPT_INT, "usage": float, "perplexity": float,
               "dead_codes": int, "normalized_entropy": float, "psnr": _OPT_FLOAT,
               "ssim": _OPT_FLOAT, "total_ids": int}
_RUN = {
    "name": str, "path": str, "source": frozenset({"history", "measured"}), "quantizer": str,
    "quantizer_config": str, "codebook_size": int,
    "verdict": {"level": _LEVELS, "text": str},
    "final": {**_VALIDATION, "used_codes": int},
    "validations": [_VALIDATION],
    "train": [{"step": int, "epoch": int, "batch_usage": float, "batch_perplexity": float,
               "batch_ids": int}],
    "codebook": {"tokenizer": (str, _NONE), "duplicate_codes": _OPT_INT,
                 "nn_codes_measured": _OPT_INT, "nn_distance_min": _OPT_FLOAT,
                 "nn_distance_median": _OPT_FLOAT},
    "samples": {"source": (str, _NONE), "count": int},
    "notes": [str],
}
SCHEMA: dict[str, Any] = {
    "format": frozenset({REPORT_FORMAT}),
    "format_version": frozenset({REPORT_VERSION}),
    "thresholds": {"collapsed_below": float, "partial_below": float,
                   "skewed_entropy_below": float, "duplicate_rel_tol": float},
    "runs": [_RUN],
    "comparison": {"runs": int, "same_codebook_size": bool, "notes": [str]},
}
"""The schema above as data: dict = exactly these keys, [spec] = a list of spec,
frozenset = one of these values, type or tuple of types = isinstance (bool is not int)."""


def validate_report(doc: Any, spec: Any = None, where: str = "report") -> None:
    """Raise ``ValueError`` naming the first key of ``doc`` that does not follow
    :data:`SCHEMA` (module docstring)."""
    spec = SCHEMA if spec is None else spec
    if isinstance(spec, dict):
        if not isinstance(doc, dict) or set(doc) != set(spec):
            got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(f"{where}: expected the keys {sorted(spec)}, got {got}")
        for key, sub in spec.items():
            validate_report(doc[key], sub, f"{where}.{key}")
    elif isinstance(spec, list):
        if not isinstance(doc, list):
            raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
                f"{where}: expected a list, got {type(doc).__name__}")
        for i, item in enumerate(doc):
            validate_report(item, spec[0], f"{where}[{i}]")
    elif isinstance(spec, frozenset):
        if isinstance(doc, bool) or doc not in spec:
            raise ValueError(f"{where}: expected one of {sorted(map(str, spec))}, got {doc!r}")
    else:
        kinds = spec if isinstance(spec, tuple) else (spec,)
        ok = isinstance(doc, kinds) and (bool in kinds or not isinstance(doc, bool))
        if float in kinds and isinstance(doc, int) and not isinstance(doc, bool):
            ok = True  # JSON writes 1.0 as 1
        if not ok:
            names = [k.__name__ for k in kinds]
            raise ValueError(f"{where}: expected {' or '.join(names)}, got {doc!r}")
        if isinstance(doc, float) and not math.isfinite(doc):
            raise ValueError(f"{where}: expected a finite number, got {doc!r}")
