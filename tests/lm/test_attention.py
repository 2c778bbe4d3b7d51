"""Attention variants against a float64 head-by-head reference (docs/algorithms.md#attention-variants)."""

from __future__ import annotations

import pytest
import torch

from tests.lm.reference import causal_attention
from vqtok.lm import Vocabulary, build_stream
from vqtok.lm.attention import (
    GroupedQueryAttention,
    KVCache,
    MultiHeadLatentAttention,
    attention_mask,
    make_attention,
)

D, H, DK = 32, 4, 8


def _positions(n_extra_text: int = 0) -> torch.Tensor:
    vocab = Vocabulary(image_codebook_size=8)
    g = torch.Generator().manual_seed(0)
    segs = ["ab", torch.randint(0, 8, (2, 3), generator=g), "c" * (1 + n_extra_text),
            torch.randint(0, 8, (2, 2, 2), generator=g)]
    return build_stream(segs, vocab).positions  # (N, 3)


def _causal(t: int) -> torch.Tensor:
    return attention_mask(None, t, t, torch.device("cpu"))


@pytest.mark.parametrize("groups", [4, 2, 1])
def test_grouped_attention_matches_reference(groups: int) -> None:
    torch.manual_seed(0)
    attn = GroupedQueryAttention(D, H, groups, DK).double()
    pos = _positions()
    x = torch.randn(1, pos.shape[0], D, dtype=torch.float64)
    got = attn(x, pos[None], _causal(pos.shape[0]))[0]
    ref = causal_attention(x[0], attn.wq.weight, attn.wk.weight, attn.wv.weight, attn.wo.weight,
                           H, groups, pos)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


def test_gqa_with_g_h_is_mha_and_g_1_is_mqa() -> None:
    torch.manual_seed(1)
    pos = _positions()[None]
    x = torch.randn(2, pos.shape[1], D)
    mask = _causal(pos.shape[1])
    for groups, kind in ((H, "mha"), (1, "mqa")):
        gqa = make_attention("gqa", D, H, DK, n_kv_heads=groups)
        other = make_attention(kind, D, H, DK)
        other.load_state_dict(gqa.state_dict())  # same weights, same shapes
        torch.testing.assert_close(gqa(x, pos, mask), other(x, pos, mask), rtol=0, atol=0)
    # A GQA layer whose kv heads are all equal (copied from one head) is that MQA layer.
    mqa = make_attention("mqa", D, H, DK)
    gqa = make_attention("gqa", D, H, DK, n_kv_heads=2)
    state = dict(mqa.state_dict())
    state["wk.weight"] = mqa.wk.weight.repeat(2, 1)
    state["wv.weight"] = mqa.wv.weight.repeat(2, 1)
    gqa.load_state_dict(state)
    torch.testing.assert_close(gqa(x, pos, mask), mqa(x, pos, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rope_mode", ["axes", "bands", "none"])
def test_mla_absorbed_equals_naive(rope_mode: str) -> None:
    torch.manual_seed(2)
    mla = MultiHeadLatentAttention(D, H, DK, d_latent=24, d_rope=6, rope_mode=rope_mode)
    pos = _positions()[None].expand(2, -1, -1)
    t = pos.shape[1]
    x = torch.randn(2, t, D)
    key_mask = torch.ones(2, t, dtype=torch.bool)
    key_mask[1, :3] = False  # left padding on row 1
    mask = attention_mask(key_mask, t, t, x.device)
    mla.absorbed = False
    naive = mla(x, pos, mask)
    mla.absorbed = True
    absorbed = mla(x, pos, mask)
    assert naive.abs().mean() > 1e-2  # a non-trivial output
    torch.testing.assert_close(absorbed, naive, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["mha", "gqa", "mqa", "mla"])
def test_cache_holds_the_formula_bytes(kind: str) -> None:
    torch.manual_seed(3)
    d_c, d_r, g = 24, 6, 2
    attn = make_attention(kind, D, H, DK, n_kv_heads=g, d_latent=d_c, d_rope=d_r)
    cache = KVCache(1)
    pos = _positions()[None].expand(3, -1, -1)
    attn(torch.randn(3, pos.shape[1], D), pos, _causal(pos.shape[1]), cache.layers[0])
    elements = {"mha": 2 * H * DK, "gqa": 2 * g * DK, "mqa": 2 * DK, "mla": d_c + d_r}[kind]
    assert cache.length == pos.shape[1]
    assert cache.bytes_per_token_per_layer() == elements * 4  # float32


@pytest.mark.parametrize("kind", ["mha", "gqa", "mqa", "mla-absorbed", "mla-naive"])
def test_layer_cache_incremental_equals_full(kind: str) -> None:
    torch.manual_seed(4)
    attn = make_attention(kind.split("-")[0], D, H, DK, n_kv_heads=2, d_latent=24, d_rope=6)
    if kind.startswith("mla"):
        attn.absorbed = kind == "mla-absorbed"
    pos = _positions()[None]
    t = pos.shape[1]
    x = torch.randn(1, t, D)
    full = attn(x, pos, _causal(t))
    cache = KVCache(1)
    parts, start = [], 0
    for stop in (5, 8, *range(9, t + 1)):  # a prefill, a chunk, then one token at a time
        mask = attention_mask(None, stop - start, stop, x.device)
        parts.append(attn(x[:, start:stop], pos[:, start:stop], mask, cache.layers[0]))
        start = stop
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)


def test_bad_attention_arguments_raise() -> None:
    with pytest.raises(ValueError, match="'linear'"):
        make_attention("linear", D, H, DK)
    with pytest.raises(ValueError, match="n_kv_heads=3"):
        make_attention("gqa", D, H, DK, n_kv_heads=3)
    with pytest.raises(ValueError, match="None"):
        make_attention("mla", D, H, DK)


def test_mla_memoised_output_weight_follows_weight_changes() -> None:
    torch.manual_seed(5)
    mla = MultiHeadLatentAttention(D, H, DK, d_latent=24, d_rope=6)
    other = MultiHeadLatentAttention(D, H, DK, d_latent=24, d_rope=6)
    pos = _positions()[None]
    x = torch.randn(1, pos.shape[1], D)
    mask = _causal(pos.shape[1])
    with torch.no_grad():
        first = mla(x, pos, mask)  # memoises W_uv W_o
        mla.load_state_dict(other.state_dict())  # in-place copies bump the versions
        second = mla(x, pos, mask)
        mla.absorbed = False
        naive = mla(x, pos, mask)
    assert (first - second).abs().max() > 1e-3
    torch.testing.assert_close(second, naive, rtol=0, atol=1e-5)
