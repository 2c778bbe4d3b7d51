"""Pure tensor maths of the quantizers: no state, no nn.Module (docs/algorithms.md).

Every function takes rows ``(N, D)`` (or ``(N,)`` ids) so that quantizers of any spatial
rank share them. Memory never grows with N x K: the nearest-code search walks (rows x codes)
tiles under ``no_grad`` and winners are gathered, never picked with a one-hot matrix.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

# The nearest-code search scores one (rows x codes) float32 tile at a time. On CPU the tile
# is small enough to stay in the last-level cache (32 MiB, shared, on the benchmark
# machine): the matmul writes it and the max reads it back before it ever reaches memory.
# At K = 65,536 (N = 16,384, dim 32, 2 threads) 8 MiB tiles of 2,048 rows x 1,024 codes
# searched about 30% faster than 64 MiB blocks of 256 rows x every code, and faster than
# the bare x @ C.T, which writes its whole N x K output to memory. Elsewhere (GPU) one
# block spans every code, so no running maximum is merged, and holds SEARCH_BLOCK_BYTES.
# Either way the search's extra memory is bounded whatever N and K are.
SEARCH_TILE_BYTES = 8 * 2**20
SEARCH_TILE_CODES = 1024
SEARCH_BLOCK_BYTES = 64 * 2**20


def search_tile(codebook_size: int, device: torch.device | str = "cpu") -> tuple[int, int]:
    """``(rows, codes)`` of one score tile of the search over ``codebook_size`` codes."""
    if torch.device(device).type != "cpu":
        return max(1, SEARCH_BLOCK_BYTES // (4 * codebook_size)), codebook_size
    codes = min(codebook_size, SEARCH_TILE_CODES)
    return max(1, SEARCH_TILE_BYTES // (4 * codes)), codes


# The only cache in this module: one CPU score tile per thread, reused by every search.
# A freshly allocated tile is mapped anew by the OS on each call, and those page faults
# cost about a third of the search at K = 1,024. Per thread, so concurrent searches never
# share it; never larger than SEARCH_TILE_BYTES unless a caller asks for larger tiles.
_SCRATCH = threading.local()


def _score_buffer(need: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A flat scratch of ``need`` elements for the nearest-code score tiles."""
    if device.type != "cpu" or need * torch.finfo(dtype).bits // 8 > SEARCH_TILE_BYTES:
        return torch.empty(need, dtype=dtype, device=device)
    buffer = getattr(_SCRATCH, "buffer", None)
    # An inference-mode tensor cannot be written outside inference mode: match the mode.
    if (
        buffer is None
        or buffer.dtype != dtype
        or buffer.numel() < need
        or buffer.is_inference() != torch.is_inference_mode_enabled()
    ):
        buffer = torch.empty(need, dtype=dtype)
        _SCRATCH.buffer = buffer
    return buffer[:need]


@torch.no_grad()
def nearest_code(
    x: Tensor, codebook: Tensor, chunk_rows: int | None = None, chunk_codes: int | None = None
) -> Tensor:
    """Ids of the nearest codes in squared Euclidean distance.

    argmin_k ||x - e_k||^2 = argmax_k (2 x.e_k - ||e_k||^2), computed tile by tile: each
    ``(rows, codes)`` tile of scores gives its row maxima, and a running maximum over the
    code tiles keeps the best. Ties resolve to the lowest index: ``max`` returns the first
    maximum within a tile, and a later tile replaces the best only when strictly greater.

    Args:
        x: ``(N, D)`` rows.
        codebook: ``(K, D)`` codes.
        chunk_rows: rows per tile; by default from :func:`search_tile`.
        chunk_codes: codes per tile; by default from :func:`search_tile`.

    Returns:
        ``(N,)`` int64 ids.
    """
    n, k = x.shape[0], codebook.shape[0]
    default_rows, default_codes = search_tile(k, x.device)
    rows = chunk_rows or default_rows
    cols = min(k, chunk_codes or default_codes)
    neg_sq_norm = -codebook.pow(2).sum(dim=1)  # (K,)
    ids = torch.empty(n, dtype=torch.long, device=x.device)
    if n == 0:
        return ids
    dtype = torch.result_type(x, codebook)
    # One score tile reused by every block (and, on CPU, by later calls).
    buffer = _score_buffer(min(rows, n) * cols, dtype, x.device)
    ramp = _descending_ramp(cols, dtype, x.device)
    for start in range(0, n, rows):
        block = x[start : start + rows]
        best_score = best_id = None
        for first in range(0, k, cols):
            codes = codebook[first : first + cols]
            scores = buffer[: len(block) * len(codes)].view(len(block), len(codes))
            # -||e||^2 + 2 x e^T, one fused addmm into the tile
            torch.addmm(neg_sq_norm[first : first + cols], block, codes.t(), beta=1.0,
                        alpha=2.0, out=scores)
            score, idx = _row_max(scores, ramp)
            if best_score is None:
                best_score, best_id = score, idx
            else:  # strictly greater: on a tie the earlier (lower) id stays
                better = score > best_score
                best_score = torch.where(better, score, best_score)
                best_id = torch.where(better, idx + first, best_id)
        ids[start : start + rows] = best_id
    return ids


def _descending_ramp(cols: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """``cols, cols - 1, ..., 1`` for :func:`_row_max`; ``None`` off CPU (a GPU's
    ``argmax`` is one fast pass) or where ``dtype`` cannot hold every integer up to
    ``cols`` exactly: then ``argmax`` serves."""
    if device.type != "cpu" or dtype not in (torch.float32, torch.float64) or cols > 2**24:
        return None
    return torch.arange(cols, 0, -1, dtype=dtype, device=device)


def _row_max(scores: Tensor, ramp: Tensor | None) -> tuple[Tensor, Tensor]:
    """Each row's maximum and the index of its first occurrence; overwrites ``scores``.

    ``argmax`` tracks an index per element and ran ~8x slower than ``amax`` on CPU tiles
    (2.8 ms against 0.35 ms for 2,048 x 1,024), so the index is found with three
    vectorised passes: mark the entries equal to the maximum (1 or 0), weight them by a
    descending ramp, and the largest weight is the first maximum's.
    """
    if ramp is None:
        best, idx = scores.max(dim=1)  # one pass; the first maximum on ties
        return best, idx
    best = scores.amax(dim=1)  # (rows,)
    width = scores.shape[1]
    # the ramp's last ``width`` entries are width, ..., 1 (a last tile may be narrower)
    weight = scores.ge_(best[:, None]).mul_(ramp[len(ramp) - width :]).amax(dim=1)
    # A NaN row maximum marks nothing (weight 0): clamp so the id stays in range.
    idx = (width - weight.long()).clamp_(max=width - 1)
    return best, idx


def straight_through(z: Tensor, q: Tensor) -> Tensor:
    """Straight-through estimator (van den Oord et al. 2017, section 3.2): the forward
    value is q, the gradient passes to z unchanged and none reaches q.

    Written sg(q) + (z - sg(z)) rather than z + sg(q - z): both have this gradient, but
    only the first equals q bit for bit (z - z is exactly 0, while z + (q - z) rounds
    whenever z and q differ by more than a factor of two), so ``indices_to_codes``
    reproduces ``z_q`` exactly.
    """
    return q.detach() + (z - z.detach())


def rotation_trick(e: Tensor, q: Tensor, eps: float = 1e-6) -> Tensor:
    """Rotation-trick gradient estimator (Fifty et al. 2024, "Restructuring Vector
    Quantization with the Rotation Trick", section 4.2 / Algorithm 1).

    With lambda = ||q||/||e||, u = e/||e||, q^ = q/||q||, r = (u + q^)/||u + q^||, all
    detached: out = lambda (e - 2 (e.r) r + 2 (e.u) q^). The forward value is q (returned
    as sg(q) + (out - sg(out)), which is q bit for bit) and the gradient to e is
    lambda R^T g with R = I - 2 r r^T + 2 q^ u^T, the rotation taking u to q^. No D x D
    matrix is built.

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
    # sg(q) + (out - sg(out)): the value is q bit for bit, the gradient that of out.
    return q.detach() + (out - out.detach())


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
    shift; atanh (nearly equal here) makes bound(0) == 0 exactly. For L = 2, where
    offset > half and atanh is undefined, the paper's tan is used.
    """
    levels = levels.to(z.dtype)
    half = (levels - 1) * (1 - eps) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0).to(z.dtype)
    ratio = offset / half
    # atanh is undefined for L = 2 (ratio = 1/(1-eps) > 1); the paper's tan serves there.
    shift = torch.where(ratio < 1, torch.atanh(ratio.clamp(max=1 - 1e-6)), torch.tan(ratio))
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


# ---- data-dependent codebook init (docs/algorithms.md#codebook-init-and-restart) -------


def sample_codes(x: Tensor, k: int) -> Tensor:
    """``k`` starting codes drawn from the rows ``x`` ``(N, D)``, at the rows' scale.

    N >= k: k distinct rows chosen at random. N < k: every row once, plus k - N draws from
    a Gaussian with the rows' per-channel mean and standard deviation (repeating rows
    would give exact duplicates, of which only the lowest index could ever win).
    Uses the global torch RNG.
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError(f"cannot draw {k} codes from an empty batch (got shape {tuple(x.shape)})")
    if n >= k:
        return x[torch.randperm(n, device=x.device)[:k]].clone()
    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0)
    extra = torch.randn(k - n, x.shape[1], device=x.device, dtype=x.dtype) * std + mean
    return torch.cat([x[torch.randperm(n, device=x.device)], extra])  # (k, D)


@torch.no_grad()
def kmeans(
    x: Tensor, k: int, iters: int, *, cosine: bool = False, chunk_rows: int | None = None
) -> Tensor:
    """Lloyd's k-means on the rows ``x`` ``(N, D)``, started from :func:`sample_codes`.

    Each iteration assigns rows with :func:`nearest_code` and moves every code to the mean
    of its rows (``code_counts`` / ``code_sums``, no one-hot); a code that receives no row
    keeps its place. ``cosine``: spherical k-means (Dhillon and Modha 2001, section 3),
    rows and codes l2-normalised. ``iters=0`` returns the starting codes.

    Returns:
        ``(k, D)`` codes in the dtype of ``x``.
    """
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    if cosine:
        x = torch.nn.functional.normalize(x, dim=1)
    codes = sample_codes(x, k)  # (k, D)
    for _ in range(iters):
        ids = nearest_code(x, codes, chunk_rows)
        counts = code_counts(ids, k).to(x.dtype)[:, None]  # (k, 1)
        means = code_sums(x, ids, k) / counts.clamp_min(1.0)
        if cosine:
            means = torch.nn.functional.normalize(means, dim=1)
        codes = torch.where(counts > 0, means, codes)
    return codes
