"""What a run's counts say: final metrics and a one-line verdict with fixed thresholds.

The statistics come from :func:`vqtok.metrics.usage_stats`
(docs/algorithms.md#codebook-usage); this module only classifies them.

Verdict (read from the last validation run's counts, n_k over the whole validation set):

- ``measurable`` = K (1 - (1 - 1/K)^N), the number of distinct codes N validation ids show
  on average when every code is equally likely: a small validation set cannot show every
  code even of a perfect codebook (N = 512 ids of K = 1,000 codes show about 401), so
  usage is judged against what it could show;
- ``collapsed`` when used / measurable < :data:`COLLAPSED_BELOW` (25%);
- ``partly collapsed`` when it is < :data:`PARTIAL_BELOW` (80%);
- ``skewed`` when enough codes are used but log(perplexity) / log(measurable) (the
  normalised entropy log(perplexity) / log K when the validation set has at least K ids)
  is < :data:`SKEWED_ENTROPY_BELOW` (0.7): a few codes take most tokens;
- ``healthy`` otherwise.

For example K = 16,384 with 1,147 codes used: "collapsed: 93% of 16,384 codes never used
on validation (perplexity 41.2)".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vqtok.metrics import usage_stats

COLLAPSED_BELOW = 0.25
"""Used / measurable codes below this: ``collapsed``."""
PARTIAL_BELOW = 0.80
"""Used / measurable codes below this (and not collapsed): ``partly collapsed``."""
SKEWED_ENTROPY_BELOW = 0.70
"""Normalised entropy below this, with enough codes used: ``skewed``."""
LEVELS = ("collapsed", "partly collapsed", "skewed", "healthy")


@dataclass(frozen=True)
class Verdict:
    """``level`` is one of :data:`LEVELS`; ``text`` the one-line sentence."""

    level: str
    text: str


def thresholds() -> dict[str, float]:
    """The verdict thresholds, as written into report.json."""
    return {"collapsed_below": COLLAPSED_BELOW, "partial_below": PARTIAL_BELOW,
            "skewed_entropy_below": SKEWED_ENTROPY_BELOW}


def percent(fraction: float) -> str:
    """``0.93 -> "93%"``; one decimal when rounding would show 0% or 100% for a value that
    is neither (``0.9994 -> "99.9%"``)."""
    if 0.0 < fraction < 0.005 or 0.995 <= fraction < 1.0:
        return f"{100 * fraction:.1f}%"
    return f"{100 * fraction:.0f}%"


def _stats(counts: np.ndarray) -> dict[str, Any]:
    stats = usage_stats(torch.from_numpy(np.asarray(counts, dtype=np.int64)))
    k = int(counts.shape[0])
    return {"usage": float(stats["usage"]), "used_codes": k - int(stats["dead_codes"]),
            "perplexity": float(stats["perplexity"]), "dead_codes": int(stats["dead_codes"]),
            "normalized_entropy": float(stats["normalized_entropy"]),
            "total_ids": int(np.asarray(counts).sum())}


def final_metrics(counts: np.ndarray, record: dict[str, Any]) -> dict[str, Any]:
    """Final metrics of a run: usage statistics of ``counts`` ``(K,)`` plus the step,
    epoch, PSNR and SSIM of its validation ``record``."""
    if counts.ndim != 1 or counts.sum() <= 0:
        raise ValueError(f"expected (K,) counts with at least one id, got shape {counts.shape} "
                         f"summing to {counts.sum()}")
    out = {"step": record.get("step"), "epoch": record.get("epoch")}
    out.update(_stats(counts))
    out.update({"psnr": record.get("psnr"), "ssim": record.get("ssim")})
    return out


def verdict(counts: np.ndarray) -> Verdict:
    """Classify a codebook from its ``(K,)`` validation counts (module docstring)."""
    s = _stats(counts)
    k, used, total = int(counts.shape[0]), s["used_codes"], s["total_ids"]
    measurable = expected_distinct(k, total)
    share = used / measurable
    dead_text = f"{percent(s['dead_codes'] / k)} of {k:,} codes never used on validation"
    used_text = f"{percent(used / k)} of {k:,} codes used on validation"
    ppl, h = s["perplexity"], s["normalized_entropy"]
    # entropy judged against what N tokens could show: log(min(K, N))
    shown = min(k, total)
    h_measurable = math.log(ppl) / math.log(shown) if shown > 1 else 1.0
    if share < COLLAPSED_BELOW:
        level, text = "collapsed", f"collapsed: {dead_text} (perplexity {ppl:,.1f})"
    elif share < PARTIAL_BELOW:
        level, text = "partly collapsed", f"partly collapsed: {dead_text} (perplexity {ppl:,.1f})"
    elif h_measurable < SKEWED_ENTROPY_BELOW:
        level = "skewed"
        text = (f"skewed: {used_text}, but normalised entropy {h:.2f} (perplexity "
                f"{ppl:,.1f}): a few codes take most tokens")
    else:
        level, text = "healthy", f"healthy: {used_text}, normalised entropy {h:.2f}"
    if total < k:
        text += (f" (only {total:,} validation tokens: even equal use of every code would show "
                 f"about {percent(measurable / k)} of them)")
    return Verdict(level, text)


def expected_distinct(k: int, n: int) -> float:
    """The mean number of distinct values among ``n`` draws from ``k`` equally likely
    ones: ``k (1 - (1 - 1/k)^n)``, computed without cancellation."""
    if k <= 1 or n <= 0:
        return float(min(k, max(n, 1)))
    return -k * math.expm1(n * math.log1p(-1.0 / k))


def comparison_notes(sizes: dict[str, int], same_codebook: bool) -> list[str]:
    """Notes for comparing runs with codebook sizes ``{run name: K}``.

    Raises:
        ValueError: ``same_codebook`` is set and the sizes differ (naming each run's K).
    """
    distinct = sorted(set(sizes.values()))
    if len(distinct) <= 1:
        return []
    listing = ", ".join(f"{name}: {k:,}" for name, k in sizes.items())
    if same_codebook:
        raise ValueError(f"runs have different codebook sizes ({listing}); the comparison "
                         f"was asked for equal sizes (--same-codebook)")
    return [(f"codebook sizes differ ({listing}): compare usage % and normalised entropy; "
             f"raw perplexity and dead-code counts are not comparable, so the overlaid "
             f"curves show normalised entropy instead of perplexity")]
