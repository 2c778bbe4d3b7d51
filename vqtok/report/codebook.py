"""The geometry of a trained codebook: all K codes, their 2-D PCA, nearest-neighbour gaps.

Codes are read through the quantizer contract, ``indices_to_codes(arange(K))``, so VQ, SimVQ
(C W) and FSQ (the grid after ``project_out``) are handled alike. Memory stays bounded
for big K: codes are produced in chunks, and the nearest-neighbour search reuses the
chunked :func:`~vqtok.quantizers.functional.nearest_code`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from vqtok.quantizers.base import Quantizer
from vqtok.quantizers.functional import nearest_code

NN_MAX_QUERIES = 16384
"""Above this many codes the nearest-neighbour distances are measured for a random subset
of this many codes (each against all K), which keeps the cost at 16,384 K D."""
DUPLICATE_REL_TOL = 1e-6
"""A code counts as a duplicate when another code lies within this fraction of the codes'
root-mean-square norm."""


@torch.no_grad()
def codebook_vectors(quantizer: Quantizer, chunk: int = 65536) -> Tensor:
    """``(K, D)`` float32 codes on the CPU: ``quantizer.indices_to_codes`` of every id; for
    a multi-stage quantizer its stages' codebooks one after the other, ``(S K, D)``."""
    if quantizer.num_stages is not None:
        return torch.cat([codebook_vectors(stage, chunk) for stage in quantizer.stages])
    quantizer = quantizer.eval()
    device = next((p.device for p in quantizer.parameters()), torch.device("cpu"))
    k = quantizer.codebook_size
    parts = []
    for start in range(0, k, chunk):
        ids = torch.arange(start, min(k, start + chunk), device=device)[None]  # (1, n)
        codes = quantizer.indices_to_codes(ids)  # (1, D, n)
        parts.append(codes[0].t().to("cpu", torch.float32))  # (n, D)
    return torch.cat(parts)


def pca_2d(codes: Tensor) -> np.ndarray:
    """``(K, 2)`` float64 coordinates on the two leading principal axes of the codes.

    Axes come from the eigenvectors of the ``D x D`` covariance (float64), each signed so
    that its largest-magnitude component is positive; a 1-D codebook gets a zero second
    coordinate.
    """
    x = codes.to(torch.float64)
    x = x - x.mean(dim=0)  # (K, D)
    cov = x.t() @ x / max(1, x.shape[0] - 1)  # (D, D)
    _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    axes = vectors.flip(1)[:, :2]  # (D, <=2), leading first
    signs = torch.sign(axes.gather(0, axes.abs().argmax(dim=0, keepdim=True)))  # (1, <=2)
    xy = x @ (axes * torch.where(signs == 0, 1.0, signs))  # (K, <=2)
    if xy.shape[1] == 1:
        xy = torch.cat([xy, torch.zeros_like(xy)], dim=1)
    return xy.numpy()


@torch.no_grad()
def nearest_other_distances(codes: Tensor, chunk_rows: int = 1024,
                            max_queries: int = NN_MAX_QUERIES,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each code to its nearest *other* code.

    For each block of ``chunk_rows`` query codes, the codes before and after the block are
    searched with :func:`nearest_code` (chunked, never ``K x K``), the block itself with a
    ``chunk_rows x chunk_rows`` distance matrix whose diagonal (self) is excluded; the
    three candidates' exact distances (float64) are compared. With more than
    ``max_queries`` codes, a random subset (fixed by ``seed``) is measured.

    Returns:
        ``(distances (Q,) float64, code ids (Q,) int64)``.
    """
    k = codes.shape[0]
    if k < 2:
        raise ValueError(f"nearest-neighbour distances need at least 2 codes, got {k}")
    if max_queries >= k:
        order = torch.arange(k)
    else:
        order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    queries = min(k, max_queries)
    ordered = codes.float()[order].contiguous()  # (K, D), the queries first
    wide = ordered.double()
    out = torch.empty(queries, dtype=torch.float64)
    for start in range(0, queries, chunk_rows):
        stop = min(queries, start + chunk_rows)
        block = ordered[start:stop]  # (c, D)
        best = torch.full((stop - start,), math.inf, dtype=torch.float64)
        for lo, hi in ((0, start), (stop, k)):  # every code outside the block
            if hi > lo:
                ids = nearest_code(block, ordered[lo:hi]) + lo  # (c,)
                best = torch.minimum(best, (wide[start:stop] - wide[ids]).norm(dim=1))
        if stop - start > 1:
            inner = torch.cdist(wide[start:stop], wide[start:stop])  # (c, c)
            inner.fill_diagonal_(math.inf)
            best = torch.minimum(best, inner.min(dim=1).values)
        out[start:stop] = best
    return out.numpy(), order[:queries].numpy()


def duplicate_count(distances: np.ndarray, codes: Tensor) -> int:
    """Codes whose nearest other code lies within :data:`DUPLICATE_REL_TOL` times the
    codes' root-mean-square norm (an all-zero codebook: exactly 0)."""
    rms = float(codes.double().pow(2).sum(dim=1).mean().sqrt())
    return int((distances <= DUPLICATE_REL_TOL * rms).sum())
