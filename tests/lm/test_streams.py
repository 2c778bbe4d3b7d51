"""Vocabulary layout, stream building, extraction and padding."""

from __future__ import annotations

import pytest
import torch

from vqtok.lm import Modality, Vocabulary, build_stream, collate, extract_images, extract_videos


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary(image_codebook_size=100)


def test_vocabulary_layout(vocab: Vocabulary) -> None:
    # 256 text bytes, codes at 256..355, then bos, eos, pad, boi, eoi, bov, eov.
    assert vocab.image_range == (256, 356)
    assert [vocab.bos, vocab.eos, vocab.pad, vocab.boi, vocab.eoi, vocab.bov, vocab.eov] == \
        list(range(356, 363))
    assert vocab.size == 363
    extra = Vocabulary(image_codebook_size=4, specials=("bos", "eos", "pad", "boi", "eoi",
                                                        "bov", "eov", "cls"))
    assert extra.special("cls") == 256 + 4 + 7 and extra.size == 268


def test_stream_layout_by_hand(vocab: Vocabulary) -> None:
    grid = torch.tensor([[0, 99], [5, 7]])
    s = build_stream(["hé", grid], vocab, add_eos=True)
    # BOS, 'h', 0xC3, 0xA9, BOI, 4 codes, EOI, EOS
    assert s.ids.tolist() == [356, 104, 0xC3, 0xA9, 359, 256, 355, 261, 263, 360, 357]
    t, i, v, sp = Modality.TEXT, Modality.IMAGE, Modality.VIDEO, Modality.SPECIAL
    assert s.modality.tolist() == [sp, t, t, t, sp, i, i, i, i, sp, sp]
    assert v not in s.modality.tolist()
    assert [(sp.kind, sp.start, sp.stop, sp.shape) for sp in s.spans] == [
        ("special", 0, 1, (1,)), ("text", 1, 4, (3,)), ("special", 4, 5, (1,)),
        ("image", 5, 9, (2, 2)), ("special", 9, 10, (1,)), ("special", 10, 11, (1,))]
    assert s.positions.shape == (11, 3) and s.cursor == 11
    assert vocab.decode_text(s.ids) == "hé"


def test_build_extract_round_trip(vocab: Vocabulary) -> None:
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 100, shape, generator=g) for shape in [(2, 3), (4, 4), (1, 5)]]
    videos = [torch.randint(0, 100, shape, generator=g) for shape in [(2, 2, 2), (3, 1, 4)]]
    segments = ["a cat", images[0], [65, 66, vocab.eos], videos[0], images[1], "x",
                videos[1], images[2]]
    s = build_stream(segments, vocab, "mrope")
    got = extract_images(s.ids, vocab, [tuple(im.shape) for im in images])
    assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, images, strict=True))
    got_v = extract_videos(s.ids, vocab, [tuple(v.shape) for v in videos])
    assert len(got_v) == 2 and all(torch.equal(a, b) for a, b in zip(got_v, videos, strict=True))
    square = build_stream([images[1]], vocab)
    assert torch.equal(extract_images(square.ids.tolist(), vocab)[0], images[1])


@pytest.mark.parametrize(
    ("segments", "kwargs", "match"),
    [
        ([torch.arange(4)], {}, r"shape \(4,\)"),
        ([torch.zeros(1, 2, 2, 2, dtype=torch.long)], {}, r"shape \(1, 2, 2, 2\)"),
        ([torch.zeros(0, 3, dtype=torch.long)], {}, r"shape \(0, 3\)"),
        ([torch.zeros(2, 2)], {}, "torch.float32"),
        ([torch.tensor([[1, 100]])], {}, r"\[1, 100\]"),
        ([torch.tensor([[-3, 1]])], {}, r"\[-3, 1\]"),
        ([], {"add_bos": False}, "empty stream"),
        (["abcdef"], {"max_len": 4}, "7 tokens"),
        ([""], {}, "empty string"),
        ([[65, 300]], {}, "300"),
        ([3.5], {}, "float"),
    ],
)
def test_bad_segments_raise(vocab: Vocabulary, segments: list, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_stream(segments, vocab, **kwargs)


def test_bad_generated_ids_raise(vocab: Vocabulary) -> None:
    boi, eoi = vocab.boi, vocab.eoi
    with pytest.raises(ValueError, match="no end marker"):
        extract_images([boi, 256, 257], vocab, (1, 2))
    with pytest.raises(ValueError, match="65"):
        extract_images([boi, 256, 65, eoi], vocab, (1, 2))
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        extract_images([boi, 256, 257, 258, eoi], vocab, (2, 2))
    with pytest.raises(ValueError, match="square"):
        extract_images([boi, 256, 257, eoi], vocab)


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_with_a_mask(vocab: Vocabulary, side: str) -> None:
    a = build_stream(["hello"], vocab)
    b = build_stream(["hi", torch.zeros(2, 2, dtype=torch.long)], vocab)
    batch = collate([a, b], vocab, side=side)
    assert batch.ids.shape == (2, 9) and batch.positions.shape == (2, 9, 3)
    assert batch.mask.sum(1).tolist() == [6, 9]
    real = batch.mask[0]
    expected_mask = [True] * 6 + [False] * 3 if side == "right" else [False] * 3 + [True] * 6
    assert real.tolist() == expected_mask
    assert torch.equal(batch.ids[0, real], a.ids)
    assert torch.equal(batch.positions[0, real], a.positions)
    assert (batch.ids[0, ~real] == vocab.pad).all()
    assert batch.cursor.tolist() == [a.cursor, b.cursor]
