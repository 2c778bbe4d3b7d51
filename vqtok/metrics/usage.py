"""Codebook utilisation from code ids alone (docs/algorithms.md#codebook-usage).

The state is one count vector, summed across processes, so the metric works for every
quantizer and under DDP. Usage must be read from counts accumulated over many batches: one
batch of N ids cannot show more than N/K usage.

A multi-stage quantizer (residual, S stages of K codes each) gives ids with a trailing
stage axis; its counts are S x K "slots", stage s's code k at slot ``s K + k``
(:func:`stage_slots`), so the pooled statistics are those of the S codebooks side by side
(usage pooled = the mean of the stages' usage) and :meth:`CodebookUsage.stage_stats`
gives each stage's own.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from vqtok.validation import check_positive, check_positive_or_none


def stage_slots(indices: Tensor, codebook_size: int) -> Tensor:
    """Ids ``(..., s)`` of a multi-stage quantizer -> slot ids ``(..., s)``: stage j's id
    plus ``j * codebook_size``, so each (stage, code) pair counts apart."""
    offsets = torch.arange(indices.shape[-1], device=indices.device) * codebook_size
    return indices.to(torch.int64) + offsets


def usage_stats(counts: Tensor) -> dict[str, Tensor]:
    """Utilisation statistics of a codebook from its per-code counts.

    With n_k the number of ids equal to k, K = len(counts) and p = n / sum(n):

    - ``usage`` = #{k: n_k > 0} / K, in [1/K, 1];
    - ``perplexity`` = exp(-sum_k p_k log p_k) with 0 log 0 = 0, in [1, K]: the number of
      equally used codes that would give the same entropy;
    - ``dead_codes`` = K - #{k: n_k > 0};
    - ``normalized_entropy`` = log(perplexity) / log K, in [0, 1]; defined as 1 when K = 1
      (a single code is trivially used uniformly).

    Args:
        counts: ``(K,)`` non-negative counts (any real or integer dtype), K >= 1.

    Returns:
        A dict of 0-dim tensors on ``counts.device``: ``usage``, ``perplexity`` and
        ``normalized_entropy`` in float64, ``dead_codes`` in int64.

    Raises:
        ValueError: if ``counts`` is not a non-empty 1-D tensor of finite non-negative
            values, or if it sums to zero (no id was counted, so p is undefined).
    """
    if not isinstance(counts, Tensor) or counts.ndim != 1 or counts.numel() == 0:
        shape = tuple(counts.shape) if isinstance(counts, Tensor) else type(counts).__name__
        raise ValueError(f"expected a non-empty 1-D tensor of per-code counts, got {shape}")
    n = counts.to(torch.float64)
    if not torch.isfinite(n).all() or (n < 0).any():
        raise ValueError(
            f"per-code counts must be finite and >= 0, got values in "
            f"[{float(n.min())}, {float(n.max())}]"
        )
    total = n.sum()
    if total <= 0:
        raise ValueError(
            "counts sum to 0: no code id was counted, so usage statistics are undefined; "
            "update the metric with at least one id before compute()"
        )
    k = n.numel()
    used = (n > 0).sum()
    p = n / total
    entropy = -torch.xlogy(p, p).sum()  # xlogy(0, 0) == 0, i.e. 0 log 0 = 0
    normalized = entropy / math.log(k) if k > 1 else torch.ones((), dtype=torch.float64,
                                                                 device=n.device)
    return {
        "usage": used.to(torch.float64) / k,
        "perplexity": entropy.exp(),
        "dead_codes": (k - used).to(torch.int64),
        "normalized_entropy": normalized,
    }


class CodebookUsage(Metric):
    """Per-code counts of the ids a quantizer emitted, and the utilisation they imply.

    ``update(indices)`` accepts integer ids of any shape with values in
    ``[0, codebook_size)``; ``compute()`` returns :func:`usage_stats` of the accumulated
    counts (``usage``, ``perplexity``, ``dead_codes``, ``normalized_entropy``).
    ``compute()`` before any id was counted raises ``ValueError``; ids that are not
    integers or lie outside ``[0, codebook_size)`` raise ``ValueError`` (a non-tensor
    ``TypeError``) and leave the counts untouched.

    Args:
        codebook_size: K, the number of codes (of each stage).
        num_stages: S for a multi-stage quantizer, whose ids have a trailing stage axis of
            at most S entries (module doc); None for one stage.

    Example:
        >>> metric = CodebookUsage(codebook_size=4)
        >>> metric.update(torch.tensor([[0, 1], [1, 1]]))
        >>> metric.compute()["usage"]
        tensor(0.5000, dtype=torch.float64)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    counts: Tensor

    def __init__(self, codebook_size: int, num_stages: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        check_positive(codebook_size=codebook_size)
        check_positive_or_none(num_stages=num_stages)
        self.codebook_size = codebook_size
        self.num_stages = num_stages
        self.add_state(
            "counts",
            default=torch.zeros((num_stages or 1) * codebook_size, dtype=torch.int64),
            dist_reduce_fx="sum",
        )

    def update(self, indices: Tensor) -> None:
        """Count integer code ids of any shape, e.g. ``(B, *spatial)``."""
        if not isinstance(indices, Tensor):
            raise TypeError(f"expected a tensor of integer code ids, got {type(indices).__name__}")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ValueError(f"expected integer code ids, got dtype {indices.dtype}")
        if indices.numel() == 0:
            return
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= self.codebook_size:
            raise ValueError(
                f"code ids must lie in [0, {self.codebook_size}), got values in [{low}, {high}]"
            )
        if self.num_stages is not None:
            if indices.ndim < 1 or indices.shape[-1] > self.num_stages:
                raise ValueError(f"expected ids with a trailing stage axis of at most "
                                 f"{self.num_stages}, got shape {tuple(indices.shape)}")
            indices = stage_slots(indices, self.codebook_size)
        ids = indices.reshape(-1).to(device=self.counts.device, dtype=torch.int64)
        self.counts += torch.bincount(ids, minlength=self.counts.numel())

    def compute(self) -> dict[str, Tensor]:
        """Utilisation statistics of the accumulated counts (see :func:`usage_stats`);
        pooled over the stages of a multi-stage quantizer."""
        return usage_stats(self.counts)

    def stage_stats(self) -> list[dict[str, Tensor]]:
        """:func:`usage_stats` of each stage's own counts (one entry for one stage)."""
        return [usage_stats(row) for row in self.counts.view(-1, self.codebook_size)]
