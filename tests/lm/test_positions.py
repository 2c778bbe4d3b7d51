"""Position schemes against hand computations (docs/algorithms.md#streams-and-positions)."""

from __future__ import annotations

import pytest
import torch

from tests.lm.reference import rope_1d, rope_axes
from vqtok.lm import Modality, Vocabulary, build_stream
from vqtok.lm.positions import make_scheme

IMAGES = [(1, 1), (2, 3), (4, 4), (3, 5), (6, 2)]
VIDEOS = [(2, 2, 2), (3, 2, 4), (1, 3, 3), (4, 1, 2)]


def test_worked_example_of_design_section_6() -> None:
    # Text at 1, 2, 3 then a 2 x 3 image: time 6.5, rows 6, 7, columns 5.5, 6.5, 7.5; next text 10.
    pos, cursor = make_scheme("rope_tie_v2").assign([3, (2, 3), 1])
    expected = [[1, 1, 1], [2, 2, 2], [3, 3, 3],
                [6.5, 6, 5.5], [6.5, 6, 6.5], [6.5, 6, 7.5],
                [6.5, 7, 5.5], [6.5, 7, 6.5], [6.5, 7, 7.5],
                [10, 10, 10]]
    assert pos.tolist() == expected
    assert cursor == 10


def test_worked_example_inside_a_stream_with_markers() -> None:
    # BOI/EOI are 1D tokens: BOI at 4, so L = 4 and every patch moves by one; EOI at 11.
    vocab = Vocabulary(image_codebook_size=16)
    grid = torch.arange(6).view(2, 3)
    s = build_stream(["abc", grid, "d"], vocab, add_bos=False)
    assert s.positions[3].tolist() == [4, 4, 4]
    assert s.positions[4:10].tolist() == [[7.5, 7, c] for c in (6.5, 7.5, 8.5)] + \
        [[7.5, 8, c] for c in (6.5, 7.5, 8.5)]
    assert s.positions[10:].tolist() == [[11, 11, 11], [12, 12, 12]]


def test_mrope_hand_example() -> None:
    # Qwen2-VL: after text 1..3, s = 4, patch (0, i, j) at (4, 4 + i, 4 + j); the largest
    # component is 6, so the next text token is at 7.
    pos, cursor = make_scheme("mrope").assign([3, (2, 3), 1])
    patches = [[4, 4 + i, 4 + j] for i in range(2) for j in range(3)]
    assert pos.tolist() == [[1, 1, 1], [2, 2, 2], [3, 3, 3]] + patches + [[7, 7, 7]]
    assert cursor == 7
    video, cursor = make_scheme("mrope").grid(10.0, (3, 2, 2))
    assert video[-1].tolist() == [13, 12, 12] and cursor == 13


def test_flat_1d_counts_every_token() -> None:
    pos, cursor = make_scheme("1d").assign([2, (2, 2, 3), 1])
    flat = torch.arange(1, 16, dtype=torch.float32)[:, None].expand(15, 3)
    assert torch.equal(pos, flat) and cursor == 15


@pytest.mark.parametrize("scheme", ["rope_tie_v2", "mrope"])
@pytest.mark.parametrize("shape", IMAGES + VIDEOS)
def test_neighbouring_patches_differ_by_one_on_one_axis(scheme: str, shape: tuple) -> None:
    pos, _ = make_scheme(scheme).grid(7.0, shape)
    t, h, w = (1, *shape) if len(shape) == 2 else shape
    grid = pos.view(t, h, w, 3)
    for axis, unit in ((0, [1, 0, 0]), (1, [0, 1, 0]), (2, [0, 0, 1])):
        diff = grid.diff(dim=axis).reshape(-1, 3)
        assert torch.equal(diff, torch.tensor(unit, dtype=pos.dtype).expand_as(diff))


@pytest.mark.parametrize("shape", IMAGES + VIDEOS)
def test_tie_v2_grid_costs_thw_positions_and_is_centred(shape: tuple) -> None:
    cursor = 5.0
    pos, after = make_scheme("rope_tie_v2").grid(cursor, shape)
    n = pos.shape[0]
    assert after == cursor + n  # as if flattened
    # Gap text -> first patch equals gap last patch -> next text, on every axis.
    first, last = pos.min(dim=0).values, pos.max(dim=0).values
    torch.testing.assert_close(first - cursor, (after + 1) - last, rtol=0, atol=0)


def test_text_scores_across_an_image_equal_flattened_rope_1d() -> None:
    torch.manual_seed(0)
    vocab = Vocabulary(image_codebook_size=32)
    segments = ["ab", torch.randint(0, 32, (3, 4)), "cd", torch.randint(0, 32, (2, 2, 2)), "e"]
    tie = build_stream(segments, vocab, "rope_tie_v2")
    flat = build_stream(segments, vocab, "1d")
    one_d = (tie.modality == Modality.TEXT) | (tie.modality == Modality.SPECIAL)
    n = int(one_d.sum())
    q, k = torch.randn(n, 18, dtype=torch.float64), torch.randn(n, 18, dtype=torch.float64)
    p_flat = flat.positions[one_d, 0].double()  # the 1D positions of the flattened stream
    expected = rope_1d(q, p_flat) @ rope_1d(k, p_flat).T
    got = rope_axes(q, tie.positions[one_d]) @ rope_axes(k, tie.positions[one_d]).T
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_unknown_scheme_and_bad_grid_raise() -> None:
    with pytest.raises(ValueError, match="'alibi'"):
        make_scheme("alibi")
    with pytest.raises(ValueError, match=r"\(2, 0\)"):
        make_scheme("rope_tie_v2").grid(0.0, (2, 0))
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 4\)"):
        make_scheme("mrope").grid(0.0, (1, 2, 3, 4))
