"""BSQ: binary spherical quantization, LFQ on the unit sphere.

Zhao et al. 2024, "Image and Video Tokenization with Binary Spherical Quantization": the d
channels are normalised, u = v / ||v||, and quantized to the nearest corner of the cube
inscribed in the unit sphere, q = sign(u) / sqrt(d). Input and code both have norm 1, so
the quantization error is bounded, ||u - q||^2 = 2 - 2 u.q <= 2 - 2 / sqrt(d) (LFQ's grows
with ||v||), and the ids are LFQ's. The straight-through estimator passes the gradient to
u, and through the normalisation to v. The entropy penalty is LFQ's with the codes at
±1/sqrt(d); the maths is in docs/algorithms.md#bsq.
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

    The arguments are LFQ's (``bits`` or ``codebook_size``, ``dim``, the loss weights,
    ``codebook_entropy``, ``entropy_group_size``); the defaults that differ:
    ``commitment_weight=0`` (the released configurations train without it: u and q both
    lie on the sphere) and ``temperature=1`` (``p(c | u) ∝ exp(2 u.c)``, the released
    inverse temperature 1). The paper's own entropy approximation is the
    ``codebook_entropy="grouped"`` bound.
    """

    spherical = True

    def __init__(self, bits: int | None = None, *, codebook_size: int | None = None,
                 dim: int | None = None, commitment_weight: float = 0.0,
                 entropy_weight: float = 0.1, diversity_gamma: float = 1.0,
                 temperature: float = 1.0, codebook_entropy: str = "exact",
                 entropy_group_size: int = 9) -> None:
        # LFQ's arguments, with the BSQ defaults above
        super().__init__(bits, codebook_size=codebook_size, dim=dim,
                         commitment_weight=commitment_weight, entropy_weight=entropy_weight,
                         diversity_gamma=diversity_gamma, temperature=temperature,
                         codebook_entropy=codebook_entropy,
                         entropy_group_size=entropy_group_size)
