"""FSQ: finite scalar quantization, an implicit codebook with no collapse to fight.

Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple": each of d channels
is bounded and rounded to one of L_i levels (section 3), so the codebook is the grid of
prod L_i points and every code is reachable by construction. A linear projection maps the
encoder width to d = len(levels) and back when they differ. No auxiliary loss.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vqtok.quantizers import functional as Fq
from vqtok.quantizers.base import ProjectedQuantizer, float32_compute
from vqtok.registry import register

# Mentzer et al. 2023, Table 1: recommended levels per target codebook size.
PRESETS: dict[int, list[int]] = {
    2**8: [8, 6, 5],
    2**10: [8, 5, 5, 5],
    2**12: [7, 5, 5, 5, 5],
    2**14: [8, 8, 8, 6, 5],
    2**16: [8, 8, 8, 5, 5, 5],
}


def _preset_list() -> str:
    return "; ".join(f"{size} (2^{size.bit_length() - 1}): {lv}" for size, lv in PRESETS.items())


@register
class FSQ(ProjectedQuantizer):
    """Finite scalar quantizer.

    Args:
        levels: number of levels per channel, each an int >= 2. Exactly one of ``levels``
            and ``codebook_size`` must be given.
        codebook_size: one of the paper's presets (2^8, 2^10, 2^12, 2^14, 2^16), which
            picks ``levels``. The preset's grid only approximates its target: the
            resulting ``self.codebook_size`` is prod(levels) (240, 1000, 4375, 15360,
            64000).
        dim: channel width of the feature maps; defaults to ``len(levels)``. Otherwise
            linear maps ``project_in`` (dim -> len(levels)) and ``project_out`` (back)
            surround the rounding.
    """

    def __init__(
        self,
        levels: list[int] | None = None,
        *,
        codebook_size: int | None = None,
        dim: int | None = None,
    ) -> None:
        super().__init__()
        if (levels is None) == (codebook_size is None):
            raise ValueError(
                f"give exactly one of levels and codebook_size, got levels={levels!r}, "
                f"codebook_size={codebook_size!r}"
            )
        if codebook_size is not None:
            if isinstance(codebook_size, bool) or codebook_size not in PRESETS:
                raise ValueError(
                    f"codebook_size must be one of the FSQ presets {_preset_list()}; got "
                    f"{codebook_size!r} (pass levels=[...] for other sizes)"
                )
            levels = PRESETS[codebook_size]
        levels = list(levels)  # type: ignore[arg-type]
        if not levels or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 2 for n in levels
        ):
            raise ValueError(f"levels must be a non-empty list of ints >= 2, got {levels!r}")
        if math.prod(levels) > 1 << 32:
            raise ValueError(f"levels give {math.prod(levels)} codes; at most 2^32 are supported")
        self._set_projections(dim, len(levels))
        self.levels_list = levels
        self.codebook_size = math.prod(levels)
        # A buffer so that .to(device) moves it; rebuilt from init args, not saved.
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.long), persistent=False)

    def quantize_map(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        # Channel-first throughout: the projections are batched matmuls over (B, C, S), and
        # the per-channel maths runs on a transposed view, so no layout copy is made in
        # either pass (those copies made FSQ as slow as the reference library's).
        h = self._to_channels(z)  # (B, d, S)
        # Mentzer et al. 2023, section 3 / App. A.1: bound, round (STE), normalise.
        codes = Fq.fsq_quantize(h.transpose(1, 2), self.levels)  # (B, S, d) in [-1, 1]
        ids = Fq.fsq_codes_to_indices(codes.detach(), self.levels)  # (B, S)
        return self._codes_to_map(codes, z.shape[2:]), ids.reshape(z.shape[0], *z.shape[2:]), {}

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        self.check_indices(indices)
        with float32_compute(indices):
            codes = Fq.fsq_indices_to_codes(indices.long().flatten(1), self.levels)  # (B, S, d)
            return self._codes_to_map(codes, indices.shape[1:])

    def _codes_to_map(self, codes: Tensor, spatial: tuple[int, ...] | torch.Size) -> Tensor:
        """Codes ``(B, S, d)`` -> ``(B, dim, *spatial)``, through a contiguous ``(B, d, S)``
        whatever layout the codes came in: ``forward`` and ``indices_to_codes`` then feed the
        projection and the decoder the same layout, and the same layout gives the same
        result bits."""
        return self._to_map(codes.transpose(1, 2).contiguous(), spatial)

    def extra_repr(self) -> str:
        return f"levels={self.levels_list}, codebook_size={self.codebook_size}, dim={self.dim}"

