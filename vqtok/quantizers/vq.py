"""VQ-VAE vector quantizer (van den Oord et al. 2017) with the options that keep a large
codebook alive: data-dependent init, EMA codebook updates, dead-code restart, cosine codes
and the rotation-trick estimator (docs/algorithms.md#vq-vae-losses and the sections
after it).

The default ``init="kmeans"`` puts the codebook at the encoder's scale from the first
training step (docs/algorithms.md#codebook-init-and-restart): a codebook
drawn N(0, 1) while the encoder's outputs start near 0 used 30 of 16,384 codes.

Under ``torch.distributed`` every rank holds the same codebook: EMA counts and sums are
all-reduced before the update, and the random choices (k-means init, restarted codes) are
made on rank 0 and broadcast.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqtok.quantizers import functional as Fq
from vqtok.quantizers.base import CodebookQuantizer, float32_compute, rows_to_map
from vqtok.registry import register

log = logging.getLogger(__name__)

_INITS = ("kmeans", "data", "normal")


@register
class VectorQuantizer(CodebookQuantizer):
    """Nearest-code quantizer with a learned codebook of ``codebook_size`` x ``dim``.

    Losses, named by role (means over all elements, already weighted):
    ``codebook`` = w ||sg(z) - q||^2 (gradient mode only) and
    ``commitment`` = w ||z - sg(q)||^2.

    Args:
        codebook_size: K, the number of codes.
        dim: D, the channel width of the feature maps.
        codebook_weight: weight of the codebook loss (ignored in EMA mode, which has none).
        commitment_weight: weight of the commitment loss (moves the encoder).
        ema_decay: None: the codebook is an ``nn.Parameter`` trained by the codebook loss.
            A float in (0, 1), e.g. 0.99: the codebook is a buffer moved by exponential
            moving averages of the assigned rows (van den Oord et al. 2017, appendix A.1)
            and there is no codebook loss.
        ema_eps: Laplace smoothing of the EMA counts.
        init: how the codebook starts. ``"kmeans"`` (default): ``kmeans_iters`` Lloyd
            iterations on the first training batch. ``"data"``: codes drawn from the
            first training batch (distinct rows; when the batch has fewer rows than
            codes, the rest from a Gaussian with the batch's per-channel mean and std).
            Both happen once, in training mode only, and are recorded in the persistent
            ``initialized`` buffer so a loaded model never re-initialises.
            ``"normal"``: N(0, 1) draws, independent of the data (collapse-prone unless
            the encoder's outputs are at unit scale; kept as the baseline).
        kmeans_iters: Lloyd iterations of the k-means init.
        restart_after: None: no restart by this rule. A float tau > 0, 2.0 recommended
            (docs/algorithms.md#codebook-init-and-restart): a code is dead once it has
            gone unchosen for as long as its fair share N/K of the rows per step would
            have brought it tau rows, that is for ceil(tau K / N) steps of N rows. Before
            each training step's search, dead codes (at most one per row of the batch,
            the longest unchosen first) are reset to distinct encoder outputs of the
            batch, with their EMA statistics reset. The same tau suits any K.
        restart_threshold: None: no restart by this rule. A float: before each training
            step, a code whose EMA usage rate falls below it is reset to a randomly
            chosen encoder output of the current batch. The usage rate is relative to
            uniform use: 1.0 means the code gets its fair share N/K of the rows per step,
            0.0 never used. It starts at 1.0, so a never-chosen code waits
            ln(tau) / ln(usage_decay) steps (687 for 0.001 and 0.99) whatever K is;
            ``restart_after`` is the rule to use. With both set, a code is dead when
            either rule says so.
        usage_decay: decay of the EMA usage rate (the ``usage`` buffer, tracked in
            training mode whatever ``restart_threshold`` is).
        grad_estimator: ``"ste"`` (straight-through) or ``"rotation"`` (Fifty et al. 2024).
        cosine: l2-normalise inputs and codes: search, losses and outputs on the unit
            sphere, so ``z_q`` and ``indices_to_codes`` return unit-norm codes.
        chunk_rows: rows per tile of the nearest-code search (default: 8 MiB tiles on CPU).
    """

    def __init__(self, codebook_size: int, dim: int, *, codebook_weight: float = 1.0,
                 commitment_weight: float = 0.25, ema_decay: float | None = None,
                 ema_eps: float = 1e-5, init: str = "kmeans", kmeans_iters: int = 10,
                 restart_threshold: float | None = None, usage_decay: float = 0.99,
                 grad_estimator: str = "ste", cosine: bool = False,
                 chunk_rows: int | None = None, restart_after: float | None = None) -> None:
        super().__init__()
        self._set_codebook_args(codebook_size, dim, codebook_weight, commitment_weight,
                                grad_estimator, chunk_rows)
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be None or in (0, 1), got {ema_decay!r}")
        if not ema_eps > 0:
            raise ValueError(f"ema_eps must be > 0, got {ema_eps!r}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if not isinstance(kmeans_iters, int) or kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be an int >= 0, got {kmeans_iters!r}")
        if restart_threshold is not None and not restart_threshold > 0:
            raise ValueError(f"restart_threshold must be None or > 0, got {restart_threshold!r}")
        if restart_after is not None and not (restart_after > 0 and math.isfinite(restart_after)):
            raise ValueError(f"restart_after must be None or a finite float > 0, "
                             f"got {restart_after!r}")
        if not 0.0 <= usage_decay < 1.0:
            raise ValueError(f"usage_decay must be in [0, 1), got {usage_decay!r}")

        self.ema_decay = ema_decay
        self.ema_eps = float(ema_eps)
        self.init = init
        self.kmeans_iters = kmeans_iters
        self.restart_threshold = restart_threshold
        self.restart_after = restart_after
        self.usage_decay = float(usage_decay)
        self.cosine = cosine

        # N(0, 1) start; "kmeans"/"data" replace it on the first training batch.
        codebook = torch.randn(codebook_size, dim)  # (K, D)
        if ema_decay is None:
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            # N_k and m_k of the EMA update (docs/algorithms.md#ema-codebook), seeded at init.
            self.register_buffer("ema_count", torch.zeros(codebook_size))
            self.register_buffer("ema_sum", torch.zeros(codebook_size, dim))
        # EMA of each code's share of the rows relative to uniform use (1.0 = N/K rows).
        self.register_buffer("usage", torch.ones(codebook_size))
        # Rows each code missed since it was last chosen, at its fair share: sum of N_t / K.
        # Saved with the weights only when restart_after uses it, so state dicts of models
        # without it keep their keys.
        self.register_buffer("missed", torch.zeros(codebook_size),
                             persistent=restart_after is not None)
        # True once the first training batch has been seen; saved with the weights.
        self.register_buffer("initialized", torch.tensor(False))

    # ---- the codebook ----------------------------------------------------------------
    def gather_codes(self, ids: Tensor) -> Tensor:
        """``(N,)`` ids -> ``(N, D)`` codes as the decoder sees them (unit-norm in cosine
        mode), with the gradient to the codebook in gradient mode. The only place codes
        are read, so ``forward`` and ``indices_to_codes`` agree bit for bit."""
        codes = self.codebook.index_select(0, ids)  # (N, D)
        return F.normalize(codes, dim=1) if self.cosine else codes

    def search_codebook(self) -> Tensor:
        """``(K, D)`` detached codebook the nearest-code search runs against."""
        codebook = self.codebook.detach()
        return F.normalize(codebook, dim=1) if self.cosine else codebook

    # ---- the quantizer contract --------------------------------------------------------
    def quantize_rows(self, rows: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        if self.cosine:
            rows = F.normalize(rows, dim=1)
        if self.training:
            if not bool(self.initialized):
                self.initialize(rows)
            if self.restart_threshold is not None or self.restart_after is not None:
                self.restart_dead_codes(rows)
        ids = Fq.nearest_code(rows, self.search_codebook(), self.chunk_rows)  # (N,)
        q = self.gather_codes(ids)  # (N, D)
        losses: dict[str, Tensor] = {}
        # van den Oord et al. 2017, eq. 3: codebook and commitment terms.
        if self.ema_decay is None:
            losses["codebook"] = self.codebook_weight * F.mse_loss(q, rows.detach())
        losses["commitment"] = self.commitment_weight * F.mse_loss(rows, q.detach())
        z_q = Fq.apply_estimator(rows, q.detach(), self.grad_estimator)
        if self.training:
            self.update_statistics(rows, ids)
        return z_q, ids, losses

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        self.check_indices(indices)
        ids = rearrange(indices.long(), "b ... -> (b ...)").to(self.codebook.device)  # (N,)
        with float32_compute(self.codebook):
            codes = self.gather_codes(ids)  # (N, D)
        return rows_to_map(codes, indices.shape[0], indices.shape[1:])

    # ---- training-time state ---------------------------------------------------------
    @torch.no_grad()
    def initialize(self, rows: Tensor) -> None:
        """Data-dependent init from the first training batch (rank 0's, broadcast), then
        seed the EMA state as if every code had held its fair share of the rows."""
        if self.init != "normal":
            codes = torch.empty_like(self.codebook)
            if _rank() == 0:
                iters = self.kmeans_iters if self.init == "kmeans" else 0
                codes = Fq.kmeans(rows.detach(), self.codebook_size, iters,
                                  cosine=self.cosine, chunk_rows=self.chunk_rows)
            self.codebook.copy_(_broadcast_from_rank0(codes))
        if self.ema_decay is not None:
            n_rows = _all_reduce_sum(rows.new_tensor(float(rows.shape[0])))
            self.ema_count.fill_(float(n_rows) / self.codebook_size)
            self.ema_sum.copy_(self.codebook * self.ema_count[:, None])
        self.usage.fill_(1.0)
        self.missed.zero_()
        self.initialized.fill_(True)
        log.info("VectorQuantizer init %r from %d rows", self.init, rows.shape[0])

    @torch.no_grad()
    def dead_codes(self) -> Tensor:
        """``(M,)`` ids of the codes to restart now, the same on every rank (the state
        they are read from is updated from all-reduced counts)."""
        dead = torch.zeros_like(self.missed, dtype=torch.bool)  # (K,)
        if self.restart_after is not None:
            dead |= self.missed >= self.restart_after
        if self.restart_threshold is not None:
            dead |= self.usage < self.restart_threshold
        return dead.nonzero().squeeze(1)

    @torch.no_grad()
    def restart_dead_codes(self, rows: Tensor) -> int:
        """Reset dead codes (:meth:`dead_codes`) to encoder outputs of this batch (chosen
        on rank 0, broadcast) and their statistics as docs/algorithms.md#codebook-init-and-restart
        says. Returns the number of codes reset."""
        dead = self.dead_codes()  # (M,)
        if dead.numel() == 0 or rows.shape[0] == 0:
            return 0
        if self.restart_after is not None:
            # One distinct row per code: at most rank 0's row count now, the codes unchosen
            # longest first (a stable sort, so ties go to the lower id); the rest wait.
            n = int(_broadcast_from_rank0(rows.new_tensor(float(rows.shape[0]))))
            if dead.numel() > n:
                order = torch.sort(self.missed[dead], descending=True, stable=True).indices
                dead = dead[order[:n]]
        n_dead = dead.numel()
        new = rows.new_empty(n_dead, self.dim)
        if _rank() == 0:
            n = rows.shape[0]
            if n >= n_dead:
                pick = torch.randperm(n, device=rows.device)[:n_dead]
            else:
                pick = torch.randint(n, (n_dead,), device=rows.device)
            new = rows.detach()[pick]
        new = _broadcast_from_rank0(new)
        self.codebook.index_copy_(0, dead, new)
        if self.ema_decay is not None:
            share = self.ema_count.sum() / self.codebook_size
            self.ema_count.index_fill_(0, dead, float(share))
            self.ema_sum.index_copy_(0, dead, new * share)
        self.usage.index_fill_(0, dead, 1.0)
        self.missed.index_fill_(0, dead, 0.0)
        log.debug("VectorQuantizer restarted %d dead codes", n_dead)
        return n_dead

    @torch.no_grad()
    def update_statistics(self, rows: Tensor, ids: Tensor) -> None:
        """Usage EMA and (EMA mode) the codebook update, from counts and sums summed over
        all ranks."""
        k = self.codebook_size
        counts = Fq.code_counts(ids, k)  # (K,)
        if self.ema_decay is None:
            counts = _all_reduce_sum(counts)
        else:
            # (K, D + 1): sums and counts in one all-reduce
            stats = torch.cat([Fq.code_sums(rows.detach(), ids, k), counts[:, None]], dim=1)
            stats = _all_reduce_sum(stats)
            counts = stats[:, -1]
            self.ema_update(counts, stats[:, :-1])
        rate = counts * (k / counts.sum().clamp_min(1.0))
        self.usage.mul_(self.usage_decay).add_(rate, alpha=1.0 - self.usage_decay)
        # missed_k <- 0 when chosen, else missed_k + N / K (docs/algorithms.md#codebook-init-and-restart)
        self.missed.add_(counts.sum() / k).masked_fill_(counts > 0, 0.0)

    @torch.no_grad()
    def ema_update(self, counts: Tensor, sums: Tensor) -> None:
        """docs/algorithms.md#ema-codebook (van den Oord et al. 2017, appendix A.1):
        N_k <- g N_k + (1-g) n_k;  m_k <- g m_k + (1-g) sum_k;
        N'_k = (N_k + eps) / (sum N + K eps) * sum N;  e_k = m_k / N'_k."""
        g = self.ema_decay
        self.ema_count.mul_(g).add_(counts, alpha=1.0 - g)
        self.ema_sum.mul_(g).add_(sums, alpha=1.0 - g)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.ema_eps) / (total + self.codebook_size * self.ema_eps)
        # A new tensor, not an in-place write: the codes looked up in this forward (which
        # the backward may recompute from the codebook, as inductor's graphs do) keep the
        # codebook they were read from (docs/training.md#torch-compile).
        self.codebook = self.ema_sum / (smoothed * total)[:, None]

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, dim={self.dim}, init={self.init!r}, "
            f"ema_decay={self.ema_decay}, restart_threshold={self.restart_threshold}, "
            f"restart_after={self.restart_after}, "
            f"grad_estimator={self.grad_estimator!r}, cosine={self.cosine}"
        )


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _all_reduce_sum(tensor: Tensor) -> Tensor:
    if _distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _broadcast_from_rank0(tensor: Tensor) -> Tensor:
    if _distributed():
        tensor = tensor.contiguous()
        dist.broadcast(tensor, src=0)
    return tensor
