"""LFQ: lookup-free quantization, one bit per channel.

Yu et al. 2023, "Language Model Beats Diffusion -- Tokenizer is Key to Visual Generation"
(MAGVIT-v2), section 3.1: each of d channels is quantized to its sign, q_i in {-1, +1},
so the codebook is the 2^d corners of a cube, never stored and never searched, and the id
is the sign pattern read as a binary number. An entropy penalty keeps each position's
assignment confident and the batch's use of the codes spread out. The maths, with the
exact batch entropy in bounded memory, is in docs/algorithms.md#lfq.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vqtok.quantizers import functional as Fq
from vqtok.quantizers.base import ProjectedQuantizer, float32_compute
from vqtok.registry import register

ENTROPY_MODES = ("exact", "grouped")
MAX_BITS = 62  # ids are int64
# The exact codebook entropy holds the batch's mean distribution over all 2^d codes and
# costs O(N 2^d) time: at 2^24 codes that is 64 MiB of probabilities and 2.7e11 terms for
# 16,384 rows, seconds per batch on a CPU; past it, use codebook_entropy="grouped".
MAX_EXACT_BITS = 24


@register
class LFQ(ProjectedQuantizer):
    """Lookup-free quantizer with 2^d codes.

    Codes ``q = sign(h)`` of the d channels of ``h`` (``q_i = +1`` where ``h_i > 0``, else
    ``-1``), passed on with the straight-through estimator; id ``= sum_i [h_i > 0] 2^i``.

    Losses, named by role, already weighted (means over positions):

    - ``commitment`` = w_c ||h - sg(q)||^2 (a mean over elements);
    - ``sample_entropy`` = w_e mean_n H(p(. | h_n)): low when each position is confident;
    - ``codebook_entropy`` = -w_e gamma H(mean_n p(. | h_n)): low (negative) when the batch
      spreads over many codes;

    with ``p(c | h) ∝ exp(-||h - c||^2 / tau)`` over the 2^d codes. Their sum is the entropy
    penalty of Yu et al. 2023 (section 3.1). A weight of 0 drops its term (and its cost).

    Args:
        bits: d, the number of binary channels. Exactly one of ``bits`` and
            ``codebook_size`` must be given.
        codebook_size: 2^d, a power of two (2 to 2^62).
        dim: channel width of the feature maps; defaults to d. Otherwise linear maps
            ``project_in`` (dim -> d) and ``project_out`` (d -> dim) surround the
            quantization, as in FSQ.
        commitment_weight: w_c (0.25 in MAGVIT-v2's training setup).
        entropy_weight: w_e of both entropy terms (0.1 in MAGVIT-v2's training setup).
        diversity_gamma: gamma, the weight of the batch term within the penalty (1.0).
        temperature: tau of ``p(c | h)`` (0.01, the inverse temperature 100 of the
            Open-MAGVIT2 and vector-quantize-pytorch implementations).
        codebook_entropy: how ``H(mean_n p(. | h_n))`` is computed. ``"exact"``: over all 2^d
            codes, in O(N 2^d) time and bounded memory (d <= 24). ``"grouped"``: the sum of
            the entropies of groups of ``entropy_group_size`` bits (Luo et al. 2024,
            Open-MAGVIT2), an upper bound of the exact value, cheap for any d.
        entropy_group_size: bits per group of the ``"grouped"`` bound (9: 2^18 codes as two
            groups of 2^9).
    """

    spherical = False
    """BSQ sets it: the channels are normalised onto the unit sphere before the sign."""

    def __init__(
        self,
        bits: int | None = None,
        *,
        codebook_size: int | None = None,
        dim: int | None = None,
        commitment_weight: float = 0.25,
        entropy_weight: float = 0.1,
        diversity_gamma: float = 1.0,
        temperature: float = 0.01,
        codebook_entropy: str = "exact",
        entropy_group_size: int = 9,
    ) -> None:
        super().__init__()
        bits = _bits_from(bits, codebook_size)
        self._set_projections(dim, bits)
        for name, weight in (("commitment_weight", commitment_weight),
                             ("entropy_weight", entropy_weight),
                             ("diversity_gamma", diversity_gamma)):
            if not isinstance(weight, (int, float)) or not weight >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {weight!r}")
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        if codebook_entropy not in ENTROPY_MODES:
            raise ValueError(
                f"codebook_entropy must be one of {ENTROPY_MODES}, got {codebook_entropy!r}"
            )
        if not _is_int(entropy_group_size) or entropy_group_size < 1:
            raise ValueError(
                f"entropy_group_size must be a positive int, got {entropy_group_size!r}"
            )
        if codebook_entropy == "exact" and entropy_weight > 0 and bits > MAX_EXACT_BITS:
            raise ValueError(
                f"codebook_entropy='exact' averages over all 2^{bits} codes; it is limited "
                f"to {MAX_EXACT_BITS} bits: use codebook_entropy='grouped' for {bits} bits"
            )

        self.bits = bits
        self.codebook_size = 2**bits
        self.commitment_weight = float(commitment_weight)
        self.entropy_weight = float(entropy_weight)
        self.diversity_gamma = float(diversity_gamma)
        self.temperature = float(temperature)
        self.codebook_entropy = codebook_entropy
        self.entropy_group_size = entropy_group_size
        # |q_i|: 1 for LFQ, 1/sqrt(d) for BSQ (codes on the unit sphere)
        self.code_scale = 1.0 / math.sqrt(bits) if self.spherical else 1.0

    # ---- the quantizer contract --------------------------------------------------------
    def quantize_map(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        # Channel-first throughout, as in FSQ: the projections are batched matmuls over
        # (B, C, S) and the sign is elementwise, so no layout copy is made.
        h = self._to_channels(z)  # (B, d, S)
        if self.spherical:
            h = F.normalize(h, dim=1)  # Zhao et al. 2024: u = h / ||h|| (docs: B1)
        positive = h.detach() > 0  # (B, d, S); a 0 channel reads as negative (L1)
        codes = self._codes(positive)  # (B, d, S): ±1 (LFQ) or ±1/sqrt(d) (BSQ)
        ids = Fq.binary_indices(positive, dim=1)  # (B, S)
        losses = self._losses(h, codes)
        z_q = self._to_map(Fq.straight_through(h, codes), z.shape[2:])  # (B, dim, *spatial)
        return z_q, ids.reshape(z.shape[0], *z.shape[2:]), losses

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        self.check_indices(indices)
        with float32_compute(indices):
            positive = Fq.binary_bits(indices.flatten(1), self.bits, dim=1)  # (B, d, S)
            return self._to_map(self._codes(positive), indices.shape[1:])

    def _codes(self, positive: Tensor) -> Tensor:
        """float32 codes ``±code_scale`` from the sign pattern: the only place codes are
        made, so ``forward`` and ``indices_to_codes`` agree bit for bit."""
        scale = torch.tensor(self.code_scale, dtype=torch.float32, device=positive.device)
        return torch.where(positive, scale, -scale)

    def _losses(self, h: Tensor, codes: Tensor) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        if self.commitment_weight > 0:  # (L6)
            losses["commitment"] = self.commitment_weight * F.mse_loss(h, codes)
        if self.entropy_weight > 0:
            # p(c | h) ∝ exp(-||h - c||^2 / tau) with c_i = ±s factorises over the bits:
            # p(c_i = +s | h) = sigmoid(4 s h_i / tau)  (docs/algorithms.md#lfq, L2)
            logits = h.transpose(1, 2).reshape(-1, self.bits) * (
                4.0 * self.code_scale / self.temperature
            )  # (N, d)
            group = self.entropy_group_size if self.codebook_entropy == "grouped" else None
            # Yu et al. 2023, section 3.1: mean_n H(p(.|h_n)) - gamma H(mean_n p(.|h_n)) (L3)
            losses["sample_entropy"] = self.entropy_weight * Fq.sample_entropy(logits)
            losses["codebook_entropy"] = -self.entropy_weight * self.diversity_gamma * (
                Fq.codebook_entropy(logits, group)
            )
        return losses

    def extra_repr(self) -> str:
        return (
            f"bits={self.bits}, codebook_size={self.codebook_size}, dim={self.dim}, "
            f"temperature={self.temperature}, codebook_entropy={self.codebook_entropy!r}"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bits_from(bits: int | None, codebook_size: int | None) -> int:
    """d from exactly one of ``bits`` and ``codebook_size`` (= 2^d)."""
    if (bits is None) == (codebook_size is None):
        raise ValueError(
            f"give exactly one of bits and codebook_size, got bits={bits!r}, "
            f"codebook_size={codebook_size!r}"
        )
    if codebook_size is not None:
        if not _is_int(codebook_size) or codebook_size < 2 or codebook_size & (codebook_size - 1):
            raise ValueError(
                f"codebook_size must be a power of two >= 2 (2^bits), got {codebook_size!r}"
            )
        bits = codebook_size.bit_length() - 1
    if not _is_int(bits) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an int in [1, {MAX_BITS}] (ids are int64), got {bits!r}")
    return bits
