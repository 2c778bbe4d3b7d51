"""Rotary embedding against hand-written float64 RoPE (docs/algorithms.md#rope)."""

from __future__ import annotations

import pytest
import torch

from tests.lm.reference import rope_1d, rope_axes
from vqtok.lm import Vocabulary, build_stream
from vqtok.lm.rope import RotaryEmbedding


def _scores(rope: RotaryEmbedding, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor):
    return rope(q, pos) @ rope(k, pos).transpose(-1, -2)


@pytest.mark.parametrize("scheme", ["rope_tie_v2", "mrope", "1d"])
def test_pure_text_stream_is_rope_1d(scheme: str) -> None:
    torch.manual_seed(0)
    vocab = Vocabulary(image_codebook_size=8)
    stream = build_stream(["hello, wörld"], vocab, scheme)
    n = stream.ids.numel()
    mode = "bands" if scheme == "mrope" else "axes"
    rope = RotaryEmbedding(24, mode=mode)
    x = torch.randn(n, 24, dtype=torch.float64)
    expected = rope_1d(x, torch.arange(1, n + 1, dtype=torch.float64))  # BOS at 1, text 2..n
    torch.testing.assert_close(rope(x, stream.positions), expected, rtol=0, atol=1e-12)


def test_one_component_positions_are_rope_1d() -> None:
    torch.manual_seed(1)
    p = torch.rand(10, dtype=torch.float64) * 300
    x = torch.randn(10, 16, dtype=torch.float64)
    rope = RotaryEmbedding(16, n_axes=1)
    torch.testing.assert_close(rope(x, p[:, None]), rope_1d(x, p), rtol=0, atol=1e-12)


def test_axes_mode_matches_hand_rotation() -> None:
    torch.manual_seed(2)
    pos = torch.rand(7, 3, dtype=torch.float64) * 50
    x = torch.randn(7, 20, dtype=torch.float64)
    torch.testing.assert_close(RotaryEmbedding(20)(x, pos), rope_axes(x, pos), rtol=0, atol=1e-12)


def test_bands_follow_qwen2_vl_sections() -> None:
    # 8 pairs: time gets 8 // 4 = 2, rows (8 - 2) // 2 = 3, columns 3 (Qwen2-VL's 1/4, 3/8, 3/8).
    rope = RotaryEmbedding(16, mode="bands")
    assert rope.axis_of_pair.tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    # Moving only the row component rotates exactly pairs 2..4.
    x = torch.randn(1, 16, dtype=torch.float64)
    moved = rope(x, torch.tensor([[0.0, 5.0, 0.0]], dtype=torch.float64))
    changed = (moved - x).abs().view(8, 2).sum(-1) > 1e-12
    assert changed.tolist() == [False, False, True, True, True, False, False, False]


@pytest.mark.parametrize("mode", ["axes", "bands"])
def test_scores_invariant_to_a_shared_shift(mode: str) -> None:
    torch.manual_seed(3)
    vocab = Vocabulary(image_codebook_size=8)
    grids = [torch.randint(0, 8, (3, 4)), torch.randint(0, 8, (2, 2, 3))]
    pos = build_stream(["ab", grids[0], "c", grids[1], "d"], vocab).positions.double()
    q = torch.randn(2, pos.shape[0], 24, dtype=torch.float64)
    k = torch.randn(2, pos.shape[0], 24, dtype=torch.float64)
    rope = RotaryEmbedding(24, mode=mode)
    shift = torch.tensor([3.7, -11.25, 42.0], dtype=torch.float64)
    before, after = _scores(rope, q, k, pos), _scores(rope, q, k, pos + shift)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-9)
    # A shift on one axis only changes nothing either, while a non-shared one does.
    skew = pos.clone()
    skew[:, 1] += torch.arange(pos.shape[0], dtype=torch.float64)
    assert (_scores(rope, q, k, skew) - before).abs().max() > 1e-3


def test_none_mode_is_identity_and_bad_inputs_raise() -> None:
    x = torch.randn(3, 8)
    assert torch.equal(RotaryEmbedding(8, mode="none")(x, torch.rand(3, 3)), x)
    with pytest.raises(ValueError, match="7"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match="'spiral'"):
        RotaryEmbedding(8, mode="spiral")
    with pytest.raises(ValueError, match="2 pairs"):
        RotaryEmbedding(4, mode="bands")
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        RotaryEmbedding(8)(x, torch.rand(3, 2))
