"""Brute-force float64 references for the binary quantizers (LFQ, BSQ), written from the
definitions alone: every one of the 2^d codes is enumerated, p(c | x) is a softmax over all
of them, and nothing factorises. Only for small d (an N x 2^d matrix is built)."""

from __future__ import annotations

import torch

F64 = torch.float64


def python_ids(positive: torch.Tensor) -> list[int]:
    """id = sum_i [bit_i] 2^i of each row of a (N, d) bool tensor, with Python ints."""
    return [sum(1 << i for i, bit in enumerate(row) if bit) for row in positive.tolist()]


def all_codes(d: int, scale: float) -> torch.Tensor:
    """(2^d, d) float64: row k is the code of id k, component i = +scale iff bit i of k."""
    return torch.tensor(
        [[scale if (k >> i) & 1 else -scale for i in range(d)] for k in range(2**d)], dtype=F64
    )


def code_probs(x: torch.Tensor, codes: torch.Tensor, tau: float) -> torch.Tensor:
    """(N, 2^d) p(c | x) ∝ exp(-||x - c||^2 / tau), a softmax over every code."""
    sq_dist = ((x.to(F64)[:, None, :] - codes[None, :, :]) ** 2).sum(-1)
    return torch.softmax(-sq_dist / tau, dim=1)


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -torch.xlogy(p, p).sum(dim=dim)


def entropies(x: torch.Tensor, codes: torch.Tensor, tau: float) -> tuple[torch.Tensor, ...]:
    """(mean_n H(p(. | x_n)), H(mean_n p(. | x_n)), mean_n p(. | x_n)) in float64."""
    p = code_probs(x, codes, tau)
    mean = p.mean(dim=0)
    return entropy(p, dim=1).mean(), entropy(mean), mean


def grouped_entropy(mean: torch.Tensor, d: int, group: int) -> torch.Tensor:
    """Sum over consecutive groups of ``group`` bits of the entropy of the group's marginal
    of the (2^d,) distribution ``mean`` (marginalised by summing over the other bits)."""
    ids = torch.arange(2**d)
    total = torch.zeros((), dtype=F64)
    for start in range(0, d, group):
        width = min(group, d - start)
        sub = (ids >> start) & ((1 << width) - 1)
        marginal = torch.zeros(2**width, dtype=F64).index_add_(0, sub, mean)
        total = total + entropy(marginal)
    return total
