"""BSQ: binary spherical quantization, LFQ on the unit sphere.

Zhao et al. 2024, "Image and Video Tokenization with Binary Spherical Quantization": the d
channels are normalised, u = v / ||v||, and quantized to the nearest corner of the cube
inscribed in the unit sphere, q = sign(u) / sqrt(d). Input and code both have norm 1, so
the quantization error is bounded, ||u - q||^2 = 2 - 2 u.q <= 2 - 2 / sqrt(d) (LFQ's grows
with ||v||), and the ids are LFQ's. The straight-through estimator passes the gradient to u, and through the
normalisation to v. The entropy penalty is LFQ's with the codes at ±1/sqrt(d); the maths is
in docs/algorithms-more-quantizers.md.
"""

from __future__ import annotations

from vqtok.quantizers.lfq import LFQ
from vqtok.registry import register


@register
class BSQ(LFQ):
    """Binary spherical quantizer with 2^d codes on the unit sphere.

    Everything as :class:`~vqtok.quantizers.LFQ` (ids, projections, losses and their names),
    except that ``h`` is first normalised to ``u = h / ||h||`` and the codes are
    ``±1/sqrt(d)``; ``p(c | u) ∝ exp(-||u - c||^2 / tau)``. The defaults are those of the
    authors' released BSQ-ViT configurations.

    Args:
        bits: d, the number of binary channels. Exactly one of ``bits`` and
            ``codebook_size`` must be given.
        codebook_size: 2^d, a power of two (2 to 2^62).
        dim: channel width of the feature maps; defaults to d. Otherwise linear maps
            ``project_in`` (dim -> d) and ``project_out`` (d -> dim) surround the
            quantization.
        commitment_weight: w_c of ``||u - sg(q)||^2`` (0: the released configurations train
            without it; u and q both lie on the sphere).
        entropy_weight: w_e of both entropy terms (0.1).
        diversity_gamma: gamma, the weight of the batch term within the penalty (1.0).
        temperature: tau (1.0: ``p(c | u) ∝ exp(2 u.c)``, the released inverse
            temperature 1).
        codebook_entropy: ``"exact"`` or ``"grouped"``, as for LFQ (the paper's own
            approximation is the grouped bound).
        entropy_group_size: bits per group of the ``"grouped"`` bound (9).
    """

    spherical = True

    def __init__(
        self,
        bits: int | None = None,
        *,
        codebook_size: int | None = None,
        dim: int | None = None,
        commitment_weight: float = 0.0,
        entropy_weight: float = 0.1,
        diversity_gamma: float = 1.0,
        temperature: float = 1.0,
        codebook_entropy: str = "exact",
        entropy_group_size: int = 9,
    ) -> None:
        super().__init__(
            bits,
            codebook_size=codebook_size,
            dim=dim,
            commitment_weight=commitment_weight,
            entropy_weight=entropy_weight,
            diversity_gamma=diversity_gamma,
            temperature=temperature,
            codebook_entropy=codebook_entropy,
            entropy_group_size=entropy_group_size,
        )
