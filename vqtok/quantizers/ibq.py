"""IBQ: index backpropagation quantization.

Shi et al. 2024, "Taming Scalable Visual Tokenizer for Autoregressive Image Generation",
section 3: the id of a position is the code with the largest logit ``z . e_k``, and the
code passed on is ``e_id`` with the straight-through gradient of the softmax over all the
logits, so every code of the codebook receives a gradient at every step (plain VQ moves
only the chosen codes). The maths, the losses of the paper's released code, and how the
softmax over K codes stays in bounded memory are in docs/algorithms.md#ibq.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqtok.quantizers import functional as Fq
from vqtok.quantizers.base import CodebookQuantizer, float32_compute, rows_to_map
from vqtok.registry import register


@register
class IBQ(CodebookQuantizer):
    """Index backpropagation quantizer with a learned codebook of ``codebook_size`` x ``dim``.

    Ids ``argmax_k z . e_k`` (the nearest code only when all codes have the same norm);
    ``z_q = e_id`` in value, with the gradient of ``softmax(z C^T) C`` (I1, I2).

    Losses, named by role, already weighted (means over elements or positions; I3-I5):

    - ``index`` = w_i ||z_q - z||^2 through the softmax straight-through: moves the
      encoder and every code;
    - ``commitment`` = w_c ||z - sg(e_id)||^2 (moves the encoder);
    - ``codebook`` = w_b ||e_id - sg(z)||^2 (moves the chosen codes);
    - ``sample_entropy`` = w_e mean_n H(softmax(z_n C^T / tau)) and ``codebook_entropy``
      = -w_e gamma H_eps(mean_n softmax(z_n C^T / tau)), in training mode only.

    The defaults are those of the released IBQ tokenizers (w_i = w_c = 1, w_b = 0.25,
    w_e = 0.05, gamma = 1, tau = 0.01, eps = 1e-5). A weight of 0 drops its term; the
    ``index`` term's gradient is what makes this IBQ rather than VQ, so it must stay > 0.

    Args:
        codebook_size: K, the number of codes (drawn N(0, 1), as an ``nn.Embedding``).
        dim: D, the channel width of the feature maps.
        index_weight: w_i, weight of the straight-through term.
        commitment_weight: w_c.
        codebook_weight: w_b (the paper's beta).
        entropy_weight: w_e of both entropy terms.
        diversity_gamma: gamma, the weight of the batch term within the entropy penalty.
        temperature: tau of the entropy terms' softmax.
        entropy_eps: eps in ``H_eps(p) = -sum_k p_k log(p_k + eps)`` of the batch term, as
            the released code computes it; 0 gives the exact entropy.
        chunk_rows: rows per tile of the id search (default: 8 MiB tiles on CPU).
        softmax_rows: rows per block of the softmax over all codes (default: about 8 MiB
            of logits per block).
    """

    def __init__(self, codebook_size: int, dim: int, *, index_weight: float = 1.0,
                 commitment_weight: float = 1.0, codebook_weight: float = 0.25,
                 entropy_weight: float = 0.05, diversity_gamma: float = 1.0,
                 temperature: float = 0.01, entropy_eps: float = 1e-5,
                 chunk_rows: int | None = None, softmax_rows: int | None = None) -> None:
        super().__init__()
        self._set_codebook_args(codebook_size, dim, codebook_weight, commitment_weight,
                                "ste", chunk_rows)
        if not isinstance(index_weight, (int, float)) or not index_weight > 0:
            raise ValueError(f"index_weight must be a number > 0 (it carries IBQ's gradient), "
                             f"got {index_weight!r}")
        for name, value in (("entropy_weight", entropy_weight),
                            ("diversity_gamma", diversity_gamma), ("entropy_eps", entropy_eps)):
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        if softmax_rows is not None and (not isinstance(softmax_rows, int)
                                         or isinstance(softmax_rows, bool) or softmax_rows < 1):
            raise ValueError(f"softmax_rows must be None or an int >= 1, got {softmax_rows!r}")
        self.index_weight = float(index_weight)
        self.entropy_weight = float(entropy_weight)
        self.diversity_gamma = float(diversity_gamma)
        self.temperature = float(temperature)
        self.entropy_eps = float(entropy_eps)
        self.softmax_rows = softmax_rows
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim))  # (K, D)

    # ---- the quantizer contract --------------------------------------------------------
    def quantize_rows(self, rows: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        codebook = self.codebook
        # (I1): the largest logit, on the tiled search's tiles (no N x K scores)
        ids = Fq.nearest_code(rows, codebook.detach(), self.chunk_rows, inner_product=True)
        codes = codebook.index_select(0, ids)  # (N, D), gradient to the chosen codes
        losses: dict[str, Tensor] = {}
        needs_grad = torch.is_grad_enabled() and (rows.requires_grad or codebook.requires_grad)
        entropy = self.training and self.entropy_weight > 0
        if needs_grad or entropy:
            inv_t = 1.0 / self.temperature if entropy else None
            soft, sample_h, mean_p = Fq.ibq_softmax(rows, codebook, inv_t, self.softmax_rows)
            z_q = Fq.ibq_straight_through(codes, soft)  # (I2)
        else:  # no gradient wanted: the value alone, e_id
            z_q, sample_h, mean_p = codes, None, None
        # (I3): the released code's three terms
        losses["index"] = self.index_weight * F.mse_loss(z_q, rows)
        if self.commitment_weight > 0:
            losses["commitment"] = self.commitment_weight * F.mse_loss(rows, codes.detach())
        if self.codebook_weight > 0:
            losses["codebook"] = self.codebook_weight * F.mse_loss(codes, rows.detach())
        if sample_h is not None and mean_p is not None:  # (I4), (I5)
            batch_h = -(mean_p * (mean_p + self.entropy_eps).log()).sum()
            if self.entropy_eps == 0:
                batch_h = Fq.entropy(mean_p)
            losses["sample_entropy"] = self.entropy_weight * sample_h
            losses["codebook_entropy"] = -self.entropy_weight * self.diversity_gamma * batch_h
        return z_q, ids, losses

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        self.check_indices(indices)
        ids = rearrange(indices.long(), "b ... -> (b ...)").to(self.codebook.device)  # (N,)
        with float32_compute(self.codebook):
            codes = self.codebook.index_select(0, ids)  # (N, D)
        return rows_to_map(codes, indices.shape[0], indices.shape[1:])

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, dim={self.dim}, "
            f"temperature={self.temperature}, entropy_weight={self.entropy_weight}"
        )
