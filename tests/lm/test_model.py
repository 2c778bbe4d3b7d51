"""The decoder: cached decoding, padding, shift invariance, constrained generation, config."""

from __future__ import annotations

import json

import pytest
import torch

from vqtok.lm import (
    GridConstraint,
    LMConfig,
    MultimodalLM,
    Vocabulary,
    build_stream,
    collate,
    generate_image,
    generate_video,
)
from vqtok.registry import build, spec_of

VOCAB = Vocabulary(image_codebook_size=20)
KINDS = ["mha", "gqa", "mqa", "mla-absorbed", "mla-naive"]
SCHEMES = ["rope_tie_v2", "mrope", "1d", "nope"]


def _model(kind: str = "mha", scheme: str = "rope_tie_v2", **overrides) -> MultimodalLM:
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=VOCAB.size, d_model=32, n_layers=2, n_heads=2, head_dim=16,
                        attention=kind.split("-")[0], n_kv_heads=1 if kind == "gqa" else None,
                        position_scheme=scheme, init_std=0.2, **overrides)
    model = MultimodalLM(cfg).eval()
    for block in model.blocks:
        if kind.startswith("mla"):
            block.attn.absorbed = kind == "mla-absorbed"
    return model


def _stream(scheme: str, seed: int = 0, text: str = "ab"):
    g = torch.Generator().manual_seed(seed)
    segs = [text, torch.randint(0, 20, (2, 3), generator=g), "c",
            torch.randint(0, 20, (2, 2, 2), generator=g), "d"]
    return build_stream(segs, VOCAB, scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("kind", KINDS)
def test_cached_decoding_equals_full_forward(kind: str, scheme: str) -> None:
    model = _model(kind, scheme)
    s = _stream(scheme)
    ids, pos = s.ids[None], s.positions[None]
    with torch.no_grad():
        full = model(ids, pos)
        cache = model.new_cache()
        parts, start = [], 0
        for stop in (6, 9, *range(10, ids.shape[1] + 1)):
            parts.append(model(ids[:, start:stop], pos[:, start:stop], cache=cache))
            start = stop
    assert full.std() > 0.1  # logits that depend on the input
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["mha", "mla-absorbed"])
def test_padding_does_not_leak(kind: str) -> None:
    model = _model(kind)
    short, long = _stream("rope_tie_v2", 1, "x"), _stream("rope_tie_v2", 2, "a longer prompt")
    with torch.no_grad():
        alone = [model(s.ids[None], s.positions[None])[0] for s in (short, long)]
        for side in ("right", "left"):
            batch = collate([short, long], VOCAB, side=side)
            logits = model(batch.ids, batch.positions, batch.mask)
            torch.testing.assert_close(logits[0][batch.mask[0]], alone[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(logits[1], alone[1], rtol=0, atol=1e-5)
        # Left-padded prompt fed through the cache, then one more token.
        batch = collate([short, long], VOCAB, side="left")
        cache = model.new_cache()
        model(batch.ids[:, :-1], batch.positions[:, :-1], batch.mask[:, :-1], cache)
        last = model(batch.ids[:, -1:], batch.positions[:, -1:], cache=cache)
    torch.testing.assert_close(last[0, 0], alone[0][-1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("scheme", ["rope_tie_v2", "mrope", "1d"])
def test_logits_invariant_to_a_shared_position_shift(scheme: str) -> None:
    model = _model("mla-absorbed", scheme)
    s = _stream(scheme)
    shift = torch.tensor([17.5, -4.0, 250.0])
    with torch.no_grad():
        base = model(s.ids[None], s.positions[None])
        moved = model(s.ids[None], (s.positions + shift)[None])
    torch.testing.assert_close(moved, base, rtol=0, atol=1e-4)


def test_constrained_generation_yields_a_grid_at_the_right_positions() -> None:
    model = _model(tie_embeddings=False)
    with torch.no_grad():  # a model that strongly prefers text bytes over image codes
        model.lm_head.weight.zero_()
        model.lm_head.weight[:256] = 5 * torch.randn(256, 32)
    prompt = build_stream(["ab"], VOCAB)  # BOS 1, a 2, b 3
    g = torch.Generator().manual_seed(0)
    free = model.generate(prompt.ids[None], prompt.positions[None], 8, top_k=1, generator=g)
    assert (free.ids[0, 3:] < 256).all()  # unconstrained: text only
    out = model.generate(prompt.ids[None], prompt.positions[None], 10, generator=g,
                         constraint=GridConstraint(VOCAB, (2, 3)), temperature=0.7, top_k=3)
    new = out.ids[0, 3:]
    assert new[0] == VOCAB.boi and new[7] == VOCAB.eoi and new[8:].lt(256).all()
    assert VOCAB.is_image_code(new[1:7]).all()
    # BOI at 4, so L = 4: time 7.5, rows 7, 8, columns 6.5, 7.5, 8.5; EOI 11, text 12, 13.
    patches = [[7.5, r, c] for r in (7, 8) for c in (6.5, 7.5, 8.5)]
    expected = [[4, 4, 4]] + patches + [[11, 11, 11], [12, 12, 12], [13, 13, 13]]
    assert out.positions[0, 3:].tolist() == expected


@pytest.mark.parametrize("scheme", ["rope_tie_v2", "mrope", "nope"])
def test_generate_image_batch_and_cache_free_path_agree(scheme: str) -> None:
    model = _model("gqa", scheme)
    grids = generate_image(model, VOCAB, ["ankle boot", "bag"], 3, 2, temperature=0)
    assert grids.shape == (2, 3, 2) and grids.dtype == torch.int64
    assert grids.min() >= 0 and grids.max() < VOCAB.image_codebook_size
    one = generate_image(model, VOCAB, "bag", 3, 2, temperature=0)
    assert torch.equal(one, grids[1])  # left padding does not change a row
    prompt = build_stream(["bag"], VOCAB, scheme)
    kwargs = {"constraint": GridConstraint(VOCAB, (3, 2)), "temperature": 0}
    cached = model.generate(prompt.ids[None], prompt.positions[None], 12, **kwargs)
    recomputed = model.generate(prompt.ids[None], prompt.positions[None], 12, use_cache=False,
                                **kwargs)
    assert torch.equal(cached.ids, recomputed.ids)
    assert torch.equal(cached.positions, recomputed.positions)


def test_video_constraint_uses_video_markers() -> None:
    model = _model("mqa", "mrope")
    prompt = build_stream(["v"], VOCAB, "mrope")
    out = model.generate(prompt.ids[None], prompt.positions[None], 14,
                         constraint=GridConstraint(VOCAB, (2, 2, 3)), temperature=0)
    new = out.ids[0, 2:]
    assert new[0] == VOCAB.bov and new[-1] == VOCAB.eov and VOCAB.is_image_code(new[1:-1]).all()
    # M-RoPE: BOV at 3, s = 4, last patch (1, 1, 2) at (5, 5, 6), EOV at 7.
    assert out.positions[0, -2].tolist() == [5, 5, 6] and out.positions[0, -1].tolist() == [7] * 3
    # A prompt that already ends with BOV: the constraint emits only the codes and EOV.
    opened = build_stream(["v", [VOCAB.bov]], VOCAB, "mrope")
    again = model.generate(opened.ids[None], opened.positions[None], 13, temperature=0,
                           constraint=GridConstraint(VOCAB, (2, 2, 3), begin=False))
    assert torch.equal(again.ids, out.ids) and torch.equal(again.positions, out.positions)


@pytest.mark.parametrize("scheme", ["rope_tie_v2", "1d"])
def test_generate_video_is_the_constrained_greedy_stream(scheme: str) -> None:
    model = _model("mha", scheme)
    grids = generate_video(model, VOCAB, ["a bag moving up", "v"], 2, 2, 3, temperature=0)
    assert grids.shape == (2, 2, 2, 3) and grids.dtype == torch.int64
    assert torch.equal(generate_video(model, VOCAB, "v", 2, 2, 3, temperature=0), grids[1])
    # The same tokens as the decoder's own constrained loop, read in raster (t, h, w) order.
    prompt = build_stream(["v"], VOCAB, scheme)
    out = model.generate(prompt.ids[None], prompt.positions[None], 14, temperature=0,
                         constraint=GridConstraint(VOCAB, (2, 2, 3)))
    codes = out.ids[0, prompt.ids.shape[0] + 1:-1] - VOCAB.image_offset
    assert codes.tolist() == grids[1].flatten().tolist()


def test_generation_arguments_are_checked() -> None:
    model = _model()
    prompt = build_stream(["ab"], VOCAB)
    ids, pos = prompt.ids[None], prompt.positions[None]
    with pytest.raises(ValueError, match="max_new_tokens=5"):
        model.generate(ids, pos, 5, constraint=GridConstraint(VOCAB, (2, 3)))
    with pytest.raises(ValueError, match="cursor"):
        model.generate(ids[:, :2], torch.tensor([[[1.0, 1, 1], [2.0, 3, 4]]]), 3)
    with pytest.raises(ValueError, match=r"\[0, 283\)"):
        model(torch.tensor([[283]]), torch.ones(1, 1, 3))
    with pytest.raises(ValueError, match="vocabulary size 30"):
        generate_image(model, Vocabulary(text_vocab=3, image_codebook_size=20), "", 2, 2)


def test_tied_embeddings_and_config_round_trip() -> None:
    tied, untied = _model(), _model(tie_embeddings=False)
    assert tied.lm_head.weight is tied.embed.weight
    assert untied.lm_head.weight is not untied.embed.weight
    n_embed = VOCAB.size * 32
    assert sum(p.numel() for p in untied.parameters()) - sum(
        p.numel() for p in tied.parameters()) == n_embed
    spec = json.loads(json.dumps(spec_of(untied)))
    rebuilt = build(spec)
    assert rebuilt.config == untied.config
    assert rebuilt.load_state_dict(untied.state_dict(), strict=True)
    with pytest.raises(ValueError, match="'sparse'"):
        LMConfig(vocab_size=10, attention="sparse")
    with pytest.raises(ValueError, match="n_kv_heads"):
        LMConfig(vocab_size=10, attention="gqa", n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="dropout"):
        LMConfig.from_dict({"vocab_size": 10, "dropout": 0.1})
