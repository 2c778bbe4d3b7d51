"""Pure tensor maths of the quantizers: no state, no nn.Module (DESIGN.md section 3).

Every function takes rows ``(N, D)`` (or ``(N,)`` ids) so that quantizers of any spatial
rank share them. Memory never grows with N x K: the nearest-code search walks the rows in
chunks under ``no_grad`` and winners are gathered, never picked with a one-hot matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Bytes of one (rows x K) float32 score block in the nearest-code search. 32 MiB keeps the
# block out of the way of the rest of the step while the matmul stays large enough to be
# efficient; the search's extra memory is bounded by it whatever N and K are.
SEARCH_BLOCK_BYTES = 32 * 2**20


def search_chunk_rows(codebook_size: int, block_bytes: int = SEARCH_BLOCK_BYTES) -> int:
    """Rows per chunk so that one ``(rows, K)`` float32 score block fits in ``block_bytes``."""
    return max(1, block_bytes // (4 * codebook_size))


@torch.no_grad()
def nearest_code(x: Tensor, codebook: Tensor, chunk_rows: int | None = None) -> Tensor:
    """Ids of the nearest codes in squared Euclidean distance.

    argmin_k ||x - e_k||^2 = argmax_k (2 x.e_k - ||e_k||^2), computed chunk by chunk.
    Ties resolve to the lowest index (``torch.argmax`` returns the first maximum).

    Args:
        x: ``(N, D)`` rows.
        codebook: ``(K, D)`` codes.
        chunk_rows: rows per chunk; by default sized so one score block is 32 MiB.

    Returns:
        ``(N,)`` int64 ids.
    """
    n, k = x.shape[0], codebook.shape[0]
    chunk = chunk_rows or search_chunk_rows(k)
    neg_sq_norm = -codebook.pow(2).sum(dim=1)  # (K,)
    codebook_t = codebook.t()  # (D, K)
    ids = torch.empty(n, dtype=torch.long, device=x.device)
    for start in range(0, n, chunk):
        block = x[start : start + chunk]
        # (rows, K) = -||e||^2 + 2 x e^T, one fused addmm
        scores = torch.addmm(neg_sq_norm, block, codebook_t, beta=1.0, alpha=2.0)
        ids[start : start + chunk] = scores.argmax(dim=1)
    return ids


def straight_through(z: Tensor, q: Tensor) -> Tensor:
    """z + sg(q - z): the forward value is q, the gradient passes to z unchanged
    (van den Oord et al. 2017, section 3.1)."""
    return z + (q - z).detach()


def rotation_trick(e: Tensor, q: Tensor, eps: float = 1e-6) -> Tensor:
    """Rotation-trick gradient estimator (Fifty et al. 2024, "Restructuring Vector
    Quantization with the Rotation Trick", section 4.2 / Algorithm 1).

    With lambda = ||q||/||e||, u = e/||e||, q^ = q/||q||, r = (u + q^)/||u + q^||, all
    detached: out = lambda (e - 2 (e.r) r + 2 (e.u) q^). The forward value is q (an
    ``sg(q - out)`` term makes it bit-exact) and the gradient to e is lambda R^T g with
    R = I - 2 r r^T + 2 q^ u^T, the rotation taking u to q^. No D x D matrix is built.

    Rows where e or q is (near) zero fall back to the straight-through estimator, so the
    gradient stays finite; e == -q gives r = 0 and R = I - 2 q^ q^T, a reflection.

    Args:
        e: ``(N, D)`` encoder outputs.
        q: ``(N, D)`` their codes.
    """
    with torch.no_grad():
        e_norm = e.norm(dim=-1, keepdim=True)
        q_norm = q.norm(dim=-1, keepdim=True)
        ok = (e_norm > eps) & (q_norm > eps)  # (N, 1); others use STE
        lam = torch.where(ok, q_norm / e_norm.clamp_min(eps), torch.ones_like(e_norm))
        u = torch.where(ok, e / e_norm.clamp_min(eps), torch.zeros_like(e))
        q_hat = torch.where(ok, q / q_norm.clamp_min(eps), torch.zeros_like(q))
        w = u + q_hat
        w_norm = w.norm(dim=-1, keepdim=True)
        r = torch.where(w_norm > eps, w / w_norm.clamp_min(eps), torch.zeros_like(w))
    e_dot_r = (e * r).sum(dim=-1, keepdim=True)
    e_dot_u = (e * u).sum(dim=-1, keepdim=True)
    out = lam * (e - 2.0 * e_dot_r * r + 2.0 * e_dot_u * q_hat)
    return out + (q - out).detach()


def apply_estimator(z: Tensor, q: Tensor, grad_estimator: str) -> Tensor:
    """Pass the codes q to the decoder with the gradient estimator named ``"ste"`` or
    ``"rotation"``."""
    if grad_estimator == "ste":
        return straight_through(z, q)
    if grad_estimator == "rotation":
        return rotation_trick(z, q)
    raise ValueError(f"grad_estimator must be 'ste' or 'rotation', got {grad_estimator!r}")


def code_counts(ids: Tensor, codebook_size: int) -> Tensor:
    """``(K,)`` float32 number of rows assigned to each code (``bincount``, no one-hot)."""
    return torch.bincount(ids, minlength=codebook_size).to(torch.float32)


def code_sums(x: Tensor, ids: Tensor, codebook_size: int) -> Tensor:
    """``(K, D)`` sum of the rows assigned to each code (``index_add_``, no one-hot)."""
    out = torch.zeros(codebook_size, x.shape[1], dtype=x.dtype, device=x.device)
    return out.index_add_(0, ids, x)


# ---- FSQ (Mentzer et al. 2023, "Finite Scalar Quantization", section 3 and App. A.1) ---


def fsq_bound(z: Tensor, levels: Tensor, eps: float = 1e-3) -> Tensor:
    """Squash each channel so that rounding yields exactly L_i values.

    half = (L-1)(1-eps)/2; offset = 0.5 for even L else 0; shift = atanh(offset/half);
    bound(z) = tanh(z + shift) * half - offset. The paper's listing writes tan for the
    shift; atanh (nearly equal here) makes bound(0) == 0 exactly.
    """
    levels = levels.to(z.dtype)
    half = (levels - 1) * (1 - eps) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0).to(z.dtype)
    shift = torch.atanh(offset / half)
    return torch.tanh(z + shift) * half - offset


def round_ste(z: Tensor) -> Tensor:
    """round(z) in the forward pass, identity gradient."""
    return z + (z.round() - z).detach()


def fsq_quantize(z: Tensor, levels: Tensor) -> Tensor:
    """Rows ``(N, d)`` -> codes ``(N, d)`` with channel i in {-(L_i//2), ..., } / (L_i//2)."""
    half_width = (levels // 2).to(z.dtype)
    return round_ste(fsq_bound(z, levels)) / half_width


def fsq_basis(levels: Tensor) -> Tensor:
    """Mixed-radix place values prod_{j<i} L_j, ``(d,)`` int64."""
    return torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), dim=0).long()


def fsq_codes_to_indices(codes: Tensor, levels: Tensor) -> Tensor:
    """Codes ``(N, d)`` -> ids ``(N,)``: sum_i digit_i prod_{j<i} L_j,
    digit_i = code_i (L_i//2) + L_i//2."""
    half_width = levels // 2
    digits = (codes * half_width.to(codes.dtype)).round().long() + half_width.long()
    return (digits * fsq_basis(levels)).sum(dim=-1)


def fsq_indices_to_codes(ids: Tensor, levels: Tensor) -> Tensor:
    """Ids ``(N,)`` -> codes ``(N, d)`` float32, the inverse of ``fsq_codes_to_indices``."""
    half_width = levels // 2
    digits = (ids.long().unsqueeze(-1) // fsq_basis(levels)) % levels.long()
    return (digits - half_width).to(torch.float32) / half_width.to(torch.float32)


def fsq_codebook_size(levels: list[int] | tuple[int, ...]) -> int:
    return math.prod(levels)
