"""Pure tensor maths of the quantizers: no state, no nn.Module (docs/algorithms.md).

Every function takes rows ``(N, D)`` (or ``(N,)`` ids) so that quantizers of any spatial
rank share them. Memory never grows with N x K: the nearest-code search
(:mod:`vqtok.quantizers.search`) walks (rows x codes) tiles under ``no_grad`` and winners
are gathered, never picked with a one-hot matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

# The search has its own module; its public names stay importable from here.
from vqtok.quantizers.search import (  # noqa: F401
    SEARCH_BLOCK_BYTES,
    SEARCH_TILE_BYTES,
    SEARCH_TILE_CODES,
    nearest_code,
    search_tile,
)


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
    """Mixed-radix place values prod_{j<i} L_j, ``(d,)`` int64.

    A running product over the d (a handful of) levels rather than ``cumprod``, which the
    ONNX exporter cannot translate for integers (docs/formats.md#onnx)."""
    places = [levels.new_ones(())]
    for level in levels[:-1]:
        places.append(places[-1] * level)
    return torch.stack(places).long()


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


# ---- binary codes: LFQ (Yu et al. 2023) and BSQ (Zhao et al. 2024) ------------------------
# docs/algorithms.md#lfq derives every formula below; (L1)-(L6) are its labels.


def binary_indices(positive: Tensor, dim: int = -1) -> Tensor:
    """Ids of sign patterns: id = sum_i [bit_i] 2^i over ``dim`` (L1), int64.

    Args:
        positive: bool (or 0/1) tensor, True where the code's component is positive.
        dim: the bit axis, bit 0 first.
    """
    bits = positive.shape[dim]
    place = torch.ones(bits, dtype=torch.long, device=positive.device).bitwise_left_shift_(
        torch.arange(bits, device=positive.device)
    )  # 1, 2, 4, ..., 2^(bits-1)
    shape = [1] * positive.ndim
    shape[dim] = bits
    return (positive.long() * place.view(shape)).sum(dim=dim)


def binary_bits(ids: Tensor, bits: int, dim: int = -1) -> Tensor:
    """The inverse of :func:`binary_indices`: ids -> bool bits, a new axis of size ``bits``
    inserted at ``dim``, bit 0 first."""
    shift = torch.arange(bits, device=ids.device)
    out_dim = dim if dim >= 0 else ids.ndim + 1 + dim
    shape = [1] * (ids.ndim + 1)
    shape[out_dim] = bits
    return (ids.long().unsqueeze(out_dim).bitwise_right_shift(shift.view(shape)) & 1).bool()


def bit_entropy(logits: Tensor) -> Tensor:
    """Binary entropy (nats) of sigmoid(logits), elementwise, stable for any logit.

    With p = sigmoid(x): log p = -softplus(-x), log(1 - p) = -softplus(x), so
    H = p softplus(-x) + (1 - p) softplus(x)."""
    p = torch.sigmoid(logits)
    return p * F.softplus(-logits) + (1 - p) * F.softplus(logits)


def entropy(p: Tensor) -> Tensor:
    """-sum p log p of a distribution (nats); 0 log 0 = 0, and the gradient stays finite
    where p underflows to 0 (the log is taken of max(p, tiny))."""
    return -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum()


def code_distribution(logits: Tensor) -> Tensor:
    """Each row's distribution over the 2^g sign patterns of its g bits, independent bits.

    Row n puts probability prod_j p_nj(c_j) on the pattern with id sum_j c_j 2^j, where
    p_nj(1) = sigmoid(x_nj) and p_nj(0) = sigmoid(-x_nj) (the complement taken as a sigmoid
    of its own, which stays accurate where the other saturates).

    Args:
        logits: ``(N, g)`` per-bit logits of "positive".

    Returns:
        ``(N, 2^g)`` rows summing to 1 (up to rounding).
    """
    n, g = logits.shape
    probs = logits.new_ones(n, 1)  # (N, 1): the empty pattern
    for j in range(g):
        x = logits[:, j : j + 1]  # (N, 1)
        # patterns with bit j = 0 first, then bit j = 1: the id gains 2^j   (N, 2^(j+1))
        probs = torch.cat([probs * torch.sigmoid(-x), probs * torch.sigmoid(x)], dim=1)
    return probs


# Rows per chunk of :func:`mean_code_distribution`: its largest per-row tensor holds
# 2^ceil(g/2) floats, so a chunk holds about this many bytes of them. At d = 18 and
# N = 16,384 (LFQ, forward + backward, 2 threads) 4 MiB chunks of 2,048 rows peaked
# 110 MiB lower than 16 MiB chunks, at the same speed.
CODE_CHUNK_BYTES = 4 * 2**20


def _summed_joint(logits: Tensor, low: int) -> Tensor:
    """sum_n p_n(c_high) p_n(c_low) over a chunk of rows: ``(2^(g-low), 2^low)``."""
    p_low = code_distribution(logits[:, :low])  # (n, 2^low)
    p_high = code_distribution(logits[:, low:])  # (n, 2^(g-low))
    return p_high.t() @ p_low


def mean_code_distribution(logits: Tensor, chunk_rows: int | None = None) -> Tensor:
    """The batch's mean distribution over all 2^g sign patterns, exactly (L4):
    P(c) = (1/N) sum_n prod_j p_nj(c_j), ``(2^g,)`` indexed by id.

    No ``N x 2^g`` tensor is built. The bits split into a low half (the first
    ``floor(g/2)``) and a high half; a row's probability of a pattern factorises as
    p_n(c_high) p_n(c_low), so summed over rows the ``(2^high, 2^low)`` table of P is one
    matrix product of the two halves' ``(N, 2^half)`` distributions: exact, in time
    O(N 2^g) and memory O(chunk 2^(g/2) + 2^g). Rows go in chunks, each through
    ``torch.utils.checkpoint`` when a gradient is needed, so the backward pass recomputes a
    chunk's half-distributions instead of keeping them for every row.

    Args:
        logits: ``(N, g)`` per-bit logits of "positive", N >= 1.
        chunk_rows: rows per chunk; by default about ``CODE_CHUNK_BYTES`` of half-tables.
    """
    n, g = logits.shape
    if n == 0:
        raise ValueError(f"cannot average code distributions over 0 rows (shape {(n, g)})")
    low = g // 2
    rows = chunk_rows or max(1, CODE_CHUNK_BYTES // (4 * 2 ** (g - low)))
    checkpointed = torch.is_grad_enabled() and logits.requires_grad
    total = None
    for start in range(0, n, rows):
        chunk = logits[start : start + rows]
        if checkpointed:
            part = torch.utils.checkpoint.checkpoint(
                _summed_joint, chunk, low, use_reentrant=False, preserve_rng_state=False
            )
        else:
            part = _summed_joint(chunk, low)
        total = part if total is None else total + part
    return (total / n).reshape(-1)  # id = c_high * 2^low + c_low


def sample_entropy(logits: Tensor) -> Tensor:
    """mean_n H(p(. | z_n)) over rows of per-bit logits ``(N, g)`` (L3): the bits are
    independent given z, so each row's entropy is the sum of its bits' entropies."""
    return bit_entropy(logits).sum(dim=1).mean()


def codebook_entropy(logits: Tensor, group_size: int | None = None) -> Tensor:
    """H(mean_n p(. | z_n)) of per-bit logits ``(N, g)``.

    ``group_size=None``: exact (L4), from :func:`mean_code_distribution` over all g bits.
    ``group_size=k``: the bits split into consecutive groups of k (the last one may be
    smaller) and the groups' entropies are summed (L5, the factorisation of Luo et al.
    2024, Open-MAGVIT2): an upper bound of the exact value (subadditivity of entropy),
    equal to it when the groups are independent under the batch's mean distribution.
    """
    g = logits.shape[1]
    if group_size is None or group_size >= g:
        return entropy(mean_code_distribution(logits))
    return sum(
        entropy(mean_code_distribution(logits[:, start : start + group_size]))
        for start in range(0, g, group_size)
    )


# ---- IBQ: index backpropagation (Shi et al. 2024) -----------------------------------------
# docs/algorithms.md#ibq derives the formulas below; (I1)-(I5) are its labels.

# Rows per block of :func:`ibq_softmax`: a block's (rows x K) float32 scratch tensors (three
# in the forward pass, four in the backward) are each about this many bytes whatever K is,
# allocated once per call and reused by every block.
IBQ_BLOCK_BYTES = 8 * 2**20
# exp(x) for x < -80 is a subnormal float or 0, and the CPU's exp took about ten times
# longer on such arguments: shifted logits below -80 are raised to -80 before the
# exponential. A probability below e^-80 (1.8e-35) then counts as about that much, which
# moves a row's sums by at most K e^-80 (5e-30 at K = 2^28), far below float32's rounding.
IBQ_EXP_FLOOR = -80.0


def _shifted_exp_(x: Tensor) -> Tensor:
    """In place: ``exp(x - rowmax(x))`` of a ``(rows, K)`` block, the shifted values floored
    at ``IBQ_EXP_FLOOR``; returns the row sums ``(rows, 1)``."""
    x.sub_(x.amax(dim=1, keepdim=True)).clamp_(min=IBQ_EXP_FLOOR).exp_()
    return x.sum(dim=1, keepdim=True)


def _entropy_block_(logits: Tensor, inv_temperature: float, scaled: Tensor,
                    probs: Tensor) -> None:
    """At the entropy's temperature, in place: ``probs`` <- ``q = softmax(l / tau)`` and
    ``scaled`` <- ``log q`` (both ``(rows, K)``; ``logits`` is left as it is)."""
    torch.mul(logits, inv_temperature, out=scaled)
    scaled.sub_(scaled.amax(dim=1, keepdim=True)).clamp_(min=IBQ_EXP_FLOOR)
    torch.exp(scaled, out=probs)
    total = probs.sum(dim=1, keepdim=True)
    probs.div_(total)
    scaled.sub_(total.log())


class _IBQSoftmax(torch.autograd.Function):
    """:func:`ibq_softmax` with its gradient written out (docs/algorithms.md#ibq, I2, I4,
    I5): the forward pass keeps nothing of size N x K, the backward pass recomputes each
    block's logits and softmaxes in the same scratch tensors."""

    @staticmethod
    def forward(ctx, rows: Tensor, codebook: Tensor, inv_temperature: float | None,
                step: int) -> tuple[Tensor, Tensor, Tensor]:
        n, k = rows.shape[0], codebook.shape[0]
        entropy = inv_temperature is not None
        soft = rows.new_empty(rows.shape)  # (N, D)
        row_h = rows.new_zeros(n if entropy else 0)  # (N,) sample entropies
        prob_sum = rows.new_zeros(k if entropy else 0)  # (K,)
        width = min(step, n)
        logits_buf = rows.new_empty(width * k)
        scaled_buf = rows.new_empty(width * k if entropy else 0)
        probs_buf = rows.new_empty(width * k if entropy else 0)
        for start in range(0, n, step):
            block = rows[start : start + step]
            r = block.shape[0]
            logits = logits_buf[: r * k].view(r, k)
            torch.mm(block, codebook.t(), out=logits)  # l = z C^T
            if entropy:
                scaled, probs = (b[: r * k].view(r, k) for b in (scaled_buf, probs_buf))
                _entropy_block_(logits, inv_temperature, scaled, probs)
                prob_sum.add_(probs.sum(dim=0))
                row_h[start : start + r] = -(scaled.mul_(probs).sum(dim=1))
            total = _shifted_exp_(logits)  # softmax(l) up to the row sums
            out = soft[start : start + r]
            torch.mm(logits, codebook, out=out)
            out.div_(total)  # s = softmax(l) C   (I2)
        ctx.save_for_backward(rows, codebook, soft, row_h)
        ctx.inv_temperature, ctx.step = inv_temperature, step
        return soft, row_h.sum() / n, prob_sum / n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_soft: Tensor, grad_h: Tensor, grad_p: Tensor
                 ) -> tuple[Tensor | None, Tensor | None, None, None]:
        rows, codebook, soft, row_h = ctx.saved_tensors
        inv_t, step = ctx.inv_temperature, ctx.step
        n, k = rows.shape[0], codebook.shape[0]
        entropy = inv_t is not None
        grad_rows = torch.empty_like(rows) if ctx.needs_input_grad[0] else None
        grad_codebook = torch.zeros_like(codebook) if ctx.needs_input_grad[1] else None
        # dL/dH_n = grad_h / N and dL/dP = grad_p / N (the outputs are means over rows)
        g_h, g_p = (grad_h / n, grad_p / n) if entropy else (None, None)
        width = min(step, n)
        bufs = [rows.new_empty(width * k) for _ in range(4 if entropy else 2)]
        for start in range(0, n, step):
            block = rows[start : start + step]
            r = block.shape[0]
            logits, grad_l, *more = (b[: r * k].view(r, k) for b in bufs)
            torch.mm(block, codebook.t(), out=logits)
            if entropy:
                # dH_n/da_k = -q_k (log q_k + H_n); dP_k/da_j through the softmax (I4, I5)
                scaled, probs = more
                _entropy_block_(logits, inv_t, scaled, probs)
                q_dot_gp = (probs @ g_p)[:, None]  # (r, 1)
                scaled.add_(row_h[start : start + r, None]).mul_(-g_h).add_(g_p)
                scaled.sub_(q_dot_gp).mul_(probs)  # dL/da, a = l / tau
            # dL/dl_k = p_k (g . e_k - g . s)  (I2), p = softmax(l)
            g = grad_soft[start : start + r]
            torch.mm(g, codebook.t(), out=grad_l)
            grad_l.sub_((g * soft[start : start + r]).sum(dim=1, keepdim=True))
            total = _shifted_exp_(logits)
            grad_l.mul_(logits).div_(total)
            if entropy:
                grad_l.add_(more[0], alpha=inv_t)
            if grad_rows is not None:
                torch.mm(grad_l, codebook, out=grad_rows[start : start + r])
            if grad_codebook is not None:
                grad_codebook.addmm_(grad_l.t(), block)
        return grad_rows, grad_codebook, None, None


def ibq_softmax(rows: Tensor, codebook: Tensor, inv_temperature: float | None = None,
                block_rows: int | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The softmax parts of IBQ over all K codes, in bounded memory.

    No ``N x K`` tensor is held: rows go in blocks of ``block_rows`` (by default about
    ``IBQ_BLOCK_BYTES`` of logits per block, at least one row) against every code, and the
    backward pass recomputes a block's logits and softmaxes rather than keeping them for
    every row (its gradient is written out in :class:`_IBQSoftmax`). Extra memory: a few
    blocks of ``r x K`` floats and ``(K, D)`` of codebook gradient, never growing with N.

    Args:
        rows: ``(N, D)`` encoder outputs z, N >= 1.
        codebook: ``(K, D)`` codes C.
        inv_temperature: 1 / tau of the entropy terms; ``None`` skips them.
        block_rows: rows per block.

    Returns:
        ``(s, h, p_mean)``: the softmax-weighted codes ``s = softmax(z C^T) sg(C)``
        ``(N, D)`` (I2; the gradient reaches C through the softmax only); the mean sample
        entropy ``mean_n H(softmax(z_n C^T / tau))`` (I4); the batch's mean distribution
        ``mean_n softmax(z_n C^T / tau)`` ``(K,)`` (I5). The last two are ``None`` without
        ``inv_temperature``.
    """
    n, k = rows.shape[0], codebook.shape[0]
    if n == 0:
        raise ValueError(f"IBQ needs at least one row, got shape {tuple(rows.shape)}")
    step = block_rows or max(1, IBQ_BLOCK_BYTES // (4 * k))
    soft, h, mean_p = _IBQSoftmax.apply(rows, codebook, inv_temperature, step)
    if inv_temperature is None:
        return soft, None, None
    return soft, h, mean_p


def ibq_straight_through(codes: Tensor, soft_codes: Tensor) -> Tensor:
    """The codes ``C[ids]`` ``(N, D)`` with the gradient of the softmax straight-through
    estimator (I2): the value is ``C[ids]`` bit for bit (``s - sg(s)`` is exactly 0) and
    the gradient reaches every code through the softmax of ``soft_codes``."""
    return codes + (soft_codes - soft_codes.detach())
