"""SimVQ: a frozen random codebook reparameterised by one learned linear map.

Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models with One
Linear Layer", section 3: the codebook is C W with C (K x d) frozen and W (d x d) learned.
The codebook loss reaches every code through W, so a step that selects only a few codes
still moves all of them (the cure for collapse the paper argues for); plain VQ moves only
the selected ones.

The default ``init="data"`` puts C W at the encoder's scale from the first training step
(docs/algorithms.md#codebook-init-and-restart): on the first training batch
W is set so that the codes have the encoder outputs' covariance, and the bias their mean.
Matching the full covariance rather than one scale (W = s I) put more codes in use at the
first step on a random conv encoder over Fashion-MNIST (of 16384: 1604 vs 886 with a
bias, 815 vs 100 without; 69 with W = I).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqtok.quantizers import functional as Fq
from vqtok.quantizers.base import CodebookQuantizer, float32_compute, rows_to_map
from vqtok.registry import register

log = logging.getLogger(__name__)

_INITS = ("data", "identity", "random")


@register
class SimVQ(CodebookQuantizer):
    """Vector quantizer whose codebook is ``linear(C)``: C frozen Gaussian, linear learned.

    Args:
        codebook_size: K, the number of codes.
        dim: d, the channel width of the feature maps.
        codebook_weight: weight of the codebook loss ``||sg(z) - q||^2`` (moves W).
        commitment_weight: weight of the commitment loss ``||z - sg(q)||^2`` (moves z).
        bias: give the linear map a learned bias (the codebook's centre).
        grad_estimator: ``"ste"`` (straight-through) or ``"rotation"`` (Fifty et al. 2024).
        init: how W starts. ``"data"`` (default): W = I until the first training batch,
            then W = sqrt(d) S^(1/2) and bias = the batch mean, S its covariance (the
            second moment without bias), so that C W + b has the encoder outputs' mean
            and covariance; done once (a persistent ``initialized`` flag), only in
            training mode, identically on every rank. ``"identity"``: W = I, bias 0, no
            data init (SimVQ is then plain VQ on C until W moves). ``"random"``: the
            ``nn.Linear`` default, as in the paper's code.
        chunk_rows: rows per tile of the nearest-code search (default: 8 MiB tiles on CPU).
    """

    def __init__(self, codebook_size: int, dim: int, *, codebook_weight: float = 1.0,
                 commitment_weight: float = 0.25, bias: bool = False,
                 grad_estimator: str = "ste", init: str = "data",
                 chunk_rows: int | None = None) -> None:
        super().__init__()
        self._set_codebook_args(codebook_size, dim, codebook_weight, commitment_weight,
                                grad_estimator, chunk_rows)
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        self.init = init

        # Zhu et al. 2024, section 3: C ~ N(0, 1/d), frozen. Persistent, so an exported
        # model reproduces the same codebook without relying on a seed.
        self.register_buffer("frozen_codebook", torch.randn(codebook_size, dim) * dim**-0.5)
        self.projection = nn.Linear(dim, dim, bias=bias)
        if init in ("data", "identity"):
            with torch.no_grad():
                self.projection.weight.copy_(torch.eye(dim))
                if bias:
                    self.projection.bias.zero_()
        # True once W holds its starting value; loaded with the weights, so a restored
        # model never re-initialises.
        self.register_buffer("initialized", torch.tensor(init != "data"))
        # Python copy of the flag once it is True, to skip a device sync per step; reset
        # whenever a state dict is loaded.
        self._init_done = init != "data"
        self.register_load_state_dict_post_hook(_reset_init_cache)

    # ---- the codebook ----------------------------------------------------------------
    def effective_codebook(self) -> Tensor:
        """``(K, d)`` float32 codes ``C W^T + b`` (``nn.Linear`` convention), with the
        gradient to W and b."""
        weight = self.projection.weight.float()
        bias = None if self.projection.bias is None else self.projection.bias.float()
        return F.linear(self.frozen_codebook.float(), weight, bias)

    @torch.no_grad()
    def data_init(self, rows: Tensor) -> None:
        """Give C W^T + b the mean and covariance of ``rows`` (the first training batch).

        The row statistics are summed over all ranks first, so every rank sets the same W.
        """
        x = rows.detach().double()
        # (1 + d + d*d,) = [row count, sum per channel, sum of outer products]
        stats = torch.cat([x.new_tensor([x.shape[0]]), x.sum(0), (x.t() @ x).flatten()])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        d = self.dim
        count, total, outer = stats[0], stats[1 : d + 1], stats[d + 1 :].view(d, d)
        weight, mean = _moment_matching_map(
            count, total, outer, centred=self.projection.bias is not None
        )
        self.projection.weight.copy_(weight.to(self.projection.weight))
        if self.projection.bias is not None:
            self.projection.bias.copy_(mean.to(self.projection.bias))
        self.initialized.fill_(True)
        log.info("SimVQ data init from %d rows (codebook rms %.4g)", int(count),
                 float(weight.pow(2).sum().div(d * d).sqrt()))

    # ---- the quantizer contract --------------------------------------------------------
    def quantize_rows(self, rows: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        if self.training and not self._init_done:
            if not bool(self.initialized):
                self.data_init(rows)
            self._init_done = True
        codebook = self.effective_codebook()  # (K, d), computed once per step
        ids = Fq.nearest_code(rows.detach(), codebook.detach(), self.chunk_rows)  # (N,)
        q = codebook[ids]  # (N, d), the gradient reaches W through every selected row
        # VQ-VAE losses (van den Oord et al. 2017, eq. 3) on the effective codebook
        # (Zhu et al. 2024, eq. 6): the codebook term trains W, the commitment term z.
        losses = {
            "codebook": self.codebook_weight * F.mse_loss(q, rows.detach()),
            "commitment": self.commitment_weight * F.mse_loss(rows, q.detach()),
        }
        if rows.requires_grad:
            z_q = Fq.apply_estimator(rows, q.detach(), self.grad_estimator)
        else:  # nothing to differentiate: hand the codes over bit for bit
            z_q = q.detach()
        return z_q, ids, losses

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        self.check_indices(indices)
        with float32_compute(indices):
            codebook = self.effective_codebook()  # (K, d), the same matmul as forward
            rows = codebook[rearrange(indices.long(), "b ... -> (b ...)")]  # (N, d)
        return rows_to_map(rows, indices.shape[0], indices.shape[1:])

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, dim={self.dim}, "
            f"grad_estimator={self.grad_estimator!r}, init={self.init!r}, "
            f"bias={self.projection.bias is not None}"
        )


def _reset_init_cache(module: nn.Module, incompatible_keys: object) -> None:
    module._init_done = False


def _moment_matching_map(
    count: Tensor, total: Tensor, outer: Tensor, *, centred: bool
) -> tuple[Tensor, Tensor]:
    """The linear map A (and centre m) with which C A^T + m has the data's moments.

    C has i.i.d. N(0, 1/d) entries, so C A^T has covariance A A^T / d. With
    S = the data's covariance (``centred``, m = its mean) or its second moment (not
    centred, m = 0), the symmetric A = sqrt(d) S^(1/2) gives A A^T / d = S. Eigenvalues
    are floored at 1e-6 of the largest so that A stays invertible for rank-deficient S.

    Args:
        count: number of rows n (scalar).
        total: ``(d,)`` sum of the rows.
        outer: ``(d, d)`` sum of the rows' outer products x x^T.
        centred: use the covariance and return the mean, else the second moment and 0.

    Returns:
        ``(A (d, d), m (d,))`` in the dtype of ``outer``.
    """
    d = outer.shape[0]
    mean = total / count
    moment = outer / count  # (d, d)
    if centred:
        moment = moment - torch.outer(mean, mean)
    else:
        mean = torch.zeros_like(mean)
    eigvals, eigvecs = torch.linalg.eigh((moment + moment.t()) / 2)
    floor = eigvals.max().clamp_min(1e-30) * 1e-6
    root = eigvecs @ torch.diag(eigvals.clamp_min(floor).sqrt()) @ eigvecs.t()  # S^(1/2)
    return root * d**0.5, mean
