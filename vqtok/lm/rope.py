"""Rotary position embedding for 1-, 2- or 3-component float positions (docs/algorithms.md#rope).

Pair ``i`` of a ``dim``-wide vector, the coordinates ``(x[2i], x[2i+1])``, is rotated by
the angle ``p[a(i)] * theta_i`` with RoPE-1D's ``theta_i = base^(-2i/dim)`` (RoFormer,
Su et al. 2021, section 3.2.2, eq. 15). Only the axis ``a(i)`` that feeds pair ``i`` differs
between the modes:

- ``"axes"`` (RoPE-Tie-v2): ``a(i) = i mod n_axes``. When all components of a position are
  equal the angles are RoPE-1D's exactly, so a pure-text stream is plain RoPE-1D.
- ``"bands"`` (Qwen2-VL M-RoPE, Wang et al. 2024, section 2.1): contiguous bands of pairs,
  the first ``sections[0]`` pairs read axis 0 (time), the next ``sections[1]`` axis 1 (row),
  the rest axis 2 (column).
- ``"none"`` (NoPE): the identity; attention is only causal.

Angles are computed in float64 and cast to the input dtype at the end, so positions in the
thousands keep their precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

ROPE_MODES = ("axes", "bands", "none")


def default_sections(n_pairs: int, n_axes: int) -> tuple[int, ...]:
    """Pairs per axis for ``"bands"``: Qwen2-VL's 1/4, 3/8, 3/8 split (16, 24, 24 of 64 pairs)
    for three axes, an even split otherwise."""
    if n_pairs < n_axes:
        raise ValueError(f"bands need at least one frequency pair per axis; got {n_pairs} pairs "
                         f"for {n_axes} axes (use a head dim >= {2 * n_axes})")
    if n_axes == 3:
        first = max(1, n_pairs // 4)
        second = (n_pairs - first) // 2
        return (first, second, n_pairs - first - second)
    base, extra = divmod(n_pairs, n_axes)
    return tuple(base + (1 if a < extra else 0) for a in range(n_axes))


class RotaryEmbedding(nn.Module):
    """Rotates ``(..., T, dim)`` vectors by their ``(..., T, n_axes)`` float positions."""

    axis_of_pair: Tensor
    inv_freq: Tensor

    def __init__(
        self,
        dim: int,
        base: float = 10000.0,
        mode: str = "axes",
        n_axes: int = 3,
        sections: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"rotary dim must be a positive even number, got {dim}")
        if mode not in ROPE_MODES:
            raise ValueError(f"rope mode must be one of {ROPE_MODES}, got {mode!r}")
        if n_axes not in (1, 2, 3):
            raise ValueError(f"n_axes must be 1, 2 or 3, got {n_axes}")
        self.dim, self.base, self.mode, self.n_axes = dim, float(base), mode, n_axes
        n_pairs = dim // 2
        # The tables are dim/2 values made on the CPU whatever the default device (under
        # the meta device a model is sized without memory, vqtok/formats/model_dir.py);
        # module.to(device) moves them with the rest.
        cpu = torch.device("cpu")
        pair = torch.arange(n_pairs, dtype=torch.float64, device=cpu)
        # RoFormer eq. 15: theta_i = base^(-2i/d), the same for every mode.
        inv_freq = self.base ** (-2.0 * pair / dim)
        if mode == "bands":
            if sections is None:
                sections = default_sections(n_pairs, n_axes)
            sections = tuple(sections)
            if len(sections) != n_axes or sum(sections) != n_pairs or min(sections) < 0:
                raise ValueError(f"sections {sections} must be {n_axes} non-negative counts "
                                 f"summing to dim/2 = {n_pairs}")
            # Qwen2-VL M-RoPE: contiguous bands of frequency pairs per axis.
            axis = torch.repeat_interleave(torch.arange(n_axes, device=cpu),
                                           torch.tensor(sections, device=cpu))
        else:
            if sections is not None:
                raise ValueError(f"sections only apply to mode 'bands', got mode {mode!r}")
            # docs/algorithms.md#frequency-assignment: pair i reads axis i mod n_axes.
            axis = torch.arange(n_pairs, device=cpu) % n_axes
        self.sections = tuple(sections) if sections is not None else None
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("axis_of_pair", axis, persistent=False)

    def angles(self, positions: Tensor) -> Tensor:
        """``(..., T, n_axes)`` positions -> ``(..., T, dim/2)`` float64 angles."""
        if positions.shape[-1] != self.n_axes:
            raise ValueError(f"positions must end in {self.n_axes} components, "
                             f"got shape {tuple(positions.shape)}")
        pos = positions.to(torch.float64)
        chosen = pos[..., self.axis_of_pair]  # (..., T, dim/2): the axis feeding each pair
        return chosen * self.inv_freq.to(pos.device)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``x`` ``(B, H, T, dim)`` (or ``(B, T, dim)``) by positions ``(B, T, n_axes)``
        or ``(T, n_axes)``; ``mode="none"`` returns ``x`` unchanged."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected vectors of size {self.dim}, got shape {tuple(x.shape)}")
        if self.mode == "none":
            return x
        theta = self.angles(positions)  # (B, T, dim/2) or (T, dim/2)
        if x.dim() == 4:
            theta = theta.unsqueeze(-3)  # (B, 1, T, dim/2): shared by heads
        cos, sin = theta.cos().to(x.dtype), theta.sin().to(x.dtype)
        pairs = x.unflatten(-1, (self.dim // 2, 2))  # (..., T, dim/2, 2)
        x0, x1 = pairs[..., 0], pairs[..., 1]
        # RoFormer eq. 34: a 2x2 rotation of each pair.
        out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        return out.flatten(-2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}, mode={self.mode!r}, n_axes={self.n_axes}"
