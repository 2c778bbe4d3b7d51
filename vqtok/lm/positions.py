"""Position assignment schemes behind one interface (docs/algorithms.md#streams-and-positions).

A stream is a sequence of *blocks*: a run of ``n`` one-dimensional tokens (text bytes and
marker/special tokens) written as the int ``n``, or a token grid written as its shape,
``(h, w)`` for an image or ``(t, h, w)`` for a video, flattened in raster order (time,
then row, then column). Every token gets a float position vector with three components,
ordered (time, row, column). A scheme walks the blocks with a running *cursor*, the last
value of the text counter ``P`` (0 before the first token, so the first text token sits at 1).

Schemes:
- ``"rope_tie_v2"``: RoPE-Tie-v2, text at ``(P, P, P)``, grids centred on the
  positions they would take if flattened (see :class:`RopeTieV2`).
- ``"mrope"``: Qwen2-VL M-RoPE, patch ``(k, i, j)`` at ``s + (k, i, j)``, next text at max + 1.
- ``"1d"`` (the language model's default): every token, patches included, at ``(P, P, P)`` with
  ``P += 1`` (flattened).
- ``"nope"``: the positions of ``"1d"`` but no rotary embedding at all (causal only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Block = int | tuple[int, ...]
"""``n`` one-dimensional tokens, or a grid shape ``(h, w)`` / ``(t, h, w)``."""


def grid_shape3(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(h, w)`` -> ``(1, h, w)``; ``(t, h, w)`` unchanged; anything else raises."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"a grid shape must be (h, w) or (t, h, w) with sizes >= 1, got {shape}")
    return (1, *shape) if len(shape) == 2 else shape  # type: ignore[return-value]


def _grid_index(t: int, h: int, w: int) -> Tensor:
    """``(t*h*w, 3)`` float64 0-based indices ``(k, i, j)`` in raster order."""
    k, i, j = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack((k, i, j), dim=-1).reshape(-1, 3).to(torch.float64)


class PositionScheme:
    """Assigns ``(N, 3)`` positions; subclasses define how a grid is placed.

    ``rope_mode`` says how :class:`~vqtok.lm.rope.RotaryEmbedding` maps frequency
    pairs to axes for this scheme (``"axes"``, ``"bands"`` or ``"none"``).
    """

    name: str = ""
    rope_mode: str = "axes"

    def text(self, cursor: float, n: int) -> tuple[Tensor, float]:
        """``n`` one-dimensional tokens after ``cursor``: ``(n, 3)`` positions, new cursor.
        Every scheme places them at ``(P, P, P)``, ``P = cursor + 1, ..., cursor + n``."""
        if n < 0:
            raise ValueError(f"a text run needs n >= 0 tokens, got {n}")
        p = cursor + torch.arange(1, n + 1, dtype=torch.float64)
        return p[:, None].expand(n, 3).clone(), cursor + n

    def grid(self, cursor: float, shape: Sequence[int]) -> tuple[Tensor, float]:
        """A ``(h, w)`` or ``(t, h, w)`` grid after ``cursor``: ``(thw, 3)`` positions in
        raster order and the new cursor."""
        raise NotImplementedError

    def assign(self, blocks: Sequence[Block], cursor: float = 0.0) -> tuple[Tensor, float]:
        """Positions ``(N, 3)`` (float32) of a whole block layout, and the final cursor."""
        parts: list[Tensor] = []
        for block in blocks:
            if isinstance(block, int):
                pos, cursor = self.text(cursor, block)
            else:
                pos, cursor = self.grid(cursor, block)
            parts.append(pos)
        if not parts:
            return torch.zeros(0, 3), cursor
        return torch.cat(parts).to(torch.float32), cursor

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RopeTieV2(PositionScheme):
    """RoPE-Tie-v2 (docs/algorithms.md#rope-tie-v2). After last position ``L``, patch ``(k, i, j)``
    (1-based) of a ``t x h x w`` grid, ``n = thw``, sits at
    ``(L + (n - t)/2 + k, L + (n - h)/2 + i, L + (n - w)/2 + j)`` and then ``P = L + n``:
    the grid costs ``n`` positions, as if flattened, and is centred in that span."""

    name = "rope_tie_v2"
    rope_mode = "axes"

    def grid(self, cursor: float, shape: Sequence[int]) -> tuple[Tensor, float]:
        t, h, w = grid_shape3(shape)
        n = t * h * w
        # docs/algorithms.md#rope-tie-v2: offsets (L + (n - t)/2, L + (n - h)/2,
        # L + (n - w)/2); an image is t = 1, so its time component is L + (n + 1)/2.
        offset = torch.tensor([(n - t) / 2, (n - h) / 2, (n - w) / 2], dtype=torch.float64)
        return cursor + offset + 1.0 + _grid_index(t, h, w), cursor + n


class MRope(PositionScheme):
    """Qwen2-VL M-RoPE (Wang et al. 2024, section 2.1): a grid starts at ``s = P + 1``,
    patch ``(k, i, j)`` (0-based) at ``s + (k, i, j)``; the next text token follows the
    largest component used, so the new cursor is ``s + max(t, h, w) - 1``."""

    name = "mrope"
    rope_mode = "bands"

    def grid(self, cursor: float, shape: Sequence[int]) -> tuple[Tensor, float]:
        t, h, w = grid_shape3(shape)
        start = cursor + 1.0
        return start + _grid_index(t, h, w), start + max(t, h, w) - 1.0


class Flat1D(PositionScheme):
    """Plain RoPE-1D over the flattened stream: patches are text-like tokens."""

    name = "1d"
    rope_mode = "axes"

    def grid(self, cursor: float, shape: Sequence[int]) -> tuple[Tensor, float]:
        t, h, w = grid_shape3(shape)
        return self.text(cursor, t * h * w)


class NoPE(Flat1D):
    """No rotary positions (positions as ``"1d"`` for bookkeeping, ignored by attention)."""

    name = "nope"
    rope_mode = "none"


SCHEMES: dict[str, type[PositionScheme]] = {
    cls.name: cls for cls in (RopeTieV2, MRope, Flat1D, NoPE)
}


def make_scheme(name: str) -> PositionScheme:
    """The scheme registered under ``name`` (one of :data:`SCHEMES`)."""
    if name not in SCHEMES:
        raise ValueError(f"unknown position scheme {name!r}; expected one of {sorted(SCHEMES)}")
    return SCHEMES[name]()
