"""LFQ (Yu et al. 2023) against independent references: ids and codes against Python bit
arithmetic for every d, the entropy terms and their gradients against a float64 softmax
over all 2^d codes (tests/quantizers/binary_reference.py), the grouped bound against the
exact value, and the peak memory at d = 18 in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import PEAK_RSS_SOURCE
from tests.quantizers import binary_reference as ref
from vqtok.quantizers import LFQ
from vqtok.quantizers import functional as Fq

F64 = torch.float64
GIB = 2**30


def rows_as_map(x: torch.Tensor) -> torch.Tensor:
    """(N, d) rows -> a (1, d, N) channel-first map: position n holds row n."""
    return x.t().unsqueeze(0).contiguous()


def entropy_only(bits: int, tau: float, **kwargs) -> LFQ:
    """LFQ whose losses are the bare entropies: weight 1, gamma 1, no commitment."""
    return LFQ(bits=bits, commitment_weight=0.0, entropy_weight=1.0, diversity_gamma=1.0,
               temperature=tau, **kwargs)


# ---- ids and codes ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 62), seed=st.integers(0, 2**31 - 1))
def test_ids_round_trip_through_codes_for_every_width(bits: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 2**bits, (3, 5), generator=gen, dtype=torch.int64)
    ids[0, 0], ids[0, 1] = 0, 2**bits - 1  # the two extreme codes
    quantizer = LFQ(bits=bits, entropy_weight=0.0).eval()
    codes = quantizer.indices_to_codes(ids)  # (3, d, 5)
    assert codes.shape == (3, bits, 5) and codes.dtype == torch.float32
    # component i of the code of id k is +1 iff bit i of k is set (Python ints)
    expected = [[[1.0 if (k >> i) & 1 else -1.0 for i in range(bits)] for k in row]
                for row in ids.tolist()]
    assert codes.permute(0, 2, 1).tolist() == expected
    out = quantizer(codes)  # the codes quantize to themselves and give their ids back
    assert torch.equal(out.indices, ids)
    assert torch.equal(out.z_q, codes)


@settings(max_examples=20, deadline=None)
@given(bits=st.integers(1, 20), seed=st.integers(0, 2**31 - 1))
def test_forward_ids_are_the_sign_pattern_read_as_binary(bits: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(37, bits, generator=gen)
    x[0] = 0.0  # a zero channel reads as negative: id 0, code -1
    out = LFQ(bits=bits, entropy_weight=0.0).eval()(rows_as_map(x))
    assert out.indices[0].tolist() == ref.python_ids(x > 0)
    assert int(out.indices[0, 0]) == 0
    assert torch.equal(out.z_q[0].t(), torch.where(x > 0, 1.0, -1.0))


def test_projection_round_trip_and_codebook_size_argument() -> None:
    torch.manual_seed(0)
    quantizer = LFQ(codebook_size=2**7, dim=12).eval()
    assert quantizer.bits == 7 and quantizer.codebook_size == 128
    z = torch.randn(2, 12, 4, 5)
    out = quantizer(z)
    assert out.indices.shape == (2, 4, 5)
    assert torch.equal(quantizer.indices_to_codes(out.indices), out.z_q)
    # the ids are the signs of the projected channels
    h = torch.einsum("oc,bchw->bhwo", quantizer.project_in.weight, z) + quantizer.project_in.bias
    assert out.indices.reshape(-1).tolist() == ref.python_ids((h > 0).reshape(-1, 7))


# ---- straight-through gradient and commitment ------------------------------------------------
def test_straight_through_gradient_and_commitment_value() -> None:
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 6, 7, generator=gen, requires_grad=True)
    g = torch.randn(2, 6, 7, generator=gen)
    out = LFQ(bits=6, commitment_weight=0.4, entropy_weight=0.0)(z)
    assert set(out.losses) == {"commitment"}
    (out.z_q * g).sum().backward()
    assert torch.equal(z.grad, g)  # the gradient passes unchanged
    zd = z.detach().to(F64)
    expected = 0.4 * ((zd - torch.where(zd > 0, 1.0, -1.0)) ** 2).mean()
    torch.testing.assert_close(out.losses["commitment"].to(F64), expected, rtol=1e-6, atol=0)


# ---- entropy terms against the brute force ---------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    bits=st.integers(1, 12),
    n=st.integers(1, 48),
    tau=st.sampled_from([0.01, 0.3, 1.0, 4.0]),
    spread=st.sampled_from([0.003, 0.1, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_entropy_terms_equal_the_brute_force(bits: int, n: int, tau: float, spread: float,
                                             seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, bits, generator=gen) * spread
    out = entropy_only(bits, tau)(rows_as_map(x))
    sample, batch, _ = ref.entropies(x, ref.all_codes(bits, 1.0), tau)
    torch.testing.assert_close(out.losses["sample_entropy"].to(F64), sample,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(-out.losses["codebook_entropy"].to(F64), batch,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bits", [1, 5, 10])
def test_entropy_gradients_equal_the_brute_force(bits: int, monkeypatch) -> None:
    """Gradients of both terms w.r.t. z, with the exact mean distribution computed in
    several checkpointed chunks of rows."""
    monkeypatch.setattr(Fq, "CODE_CHUNK_BYTES", 4 * 2 ** (bits - bits // 2) * 7)  # 7 rows
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(40, bits, generator=gen) * 0.4
    tau = 0.5
    z = rows_as_map(x).requires_grad_(True)
    out = entropy_only(bits, tau)(z)
    got_sample, = torch.autograd.grad(out.losses["sample_entropy"], z, retain_graph=True)
    got_batch, = torch.autograd.grad(out.losses["codebook_entropy"], z)
    x64 = x.to(F64).requires_grad_(True)
    sample, batch, _ = ref.entropies(x64, ref.all_codes(bits, 1.0), tau)
    ref_sample, = torch.autograd.grad(sample, x64, retain_graph=True)
    ref_batch, = torch.autograd.grad(-batch, x64)
    torch.testing.assert_close(got_sample[0].t().to(F64), ref_sample, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(got_batch[0].t().to(F64), ref_batch, rtol=1e-3, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    bits=st.integers(2, 12),
    group=st.integers(1, 6),
    tau=st.sampled_from([0.05, 0.5, 2.0]),
    shift=st.floats(-0.5, 0.5),
    seed=st.integers(0, 2**31 - 1),
)
def test_grouped_bound_is_the_sum_of_group_entropies_and_at_least_the_exact(
    bits: int, group: int, tau: float, shift: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    # correlated bits (a shared factor), where the bound is strict
    common = torch.randn(64, 1, generator=gen)
    x = 0.5 * common + 0.3 * torch.randn(64, bits, generator=gen) + shift
    grouped = entropy_only(bits, tau, codebook_entropy="grouped", entropy_group_size=group)
    exact = entropy_only(bits, tau)
    h_grouped = -grouped(rows_as_map(x)).losses["codebook_entropy"].to(F64)
    h_exact = -exact(rows_as_map(x)).losses["codebook_entropy"].to(F64)
    _, batch, mean = ref.entropies(x, ref.all_codes(bits, 1.0), tau)
    torch.testing.assert_close(h_grouped, ref.grouped_entropy(mean, bits, group),
                               rtol=1e-4, atol=1e-5)
    assert float(h_grouped) >= float(batch) - 1e-4
    assert float(h_grouped) >= float(h_exact) - 1e-4


def test_saturated_probabilities_keep_finite_gradients() -> None:
    """tau = 0.01 with large inputs: every bit probability is 0 or 1 in float32."""
    z = (torch.randn(2, 10, 30) * 50).requires_grad_(True)
    out = LFQ(bits=10)(z)
    total = sum(out.losses.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(z.grad).all()


# ---- bounded memory ---------------------------------------------------------------------------
MEMORY_SCRIPT = PEAK_RSS_SOURCE + textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(2)
    from vqtok.quantizers import {cls}
    torch.manual_seed(0)
    quantizer = {cls}(bits=18, dim=32).train()
    z = torch.randn(16, 32, 32, 32, requires_grad=True)  # N = 16,384 rows
    out = quantizer(z)
    (out.z_q.sum() + sum(out.losses.values())).backward()
    assert torch.isfinite(z.grad).all()
    print(json.dumps({{"peak_rss": peak_rss_bytes(),
                      "losses": sorted(out.losses)}}))
    """
)


def peak_rss_of(cls: str) -> dict:
    """Forward + backward at d = 18, N = 16,384 with the exact batch entropy, in a fresh
    process: its peak RSS (imports included). An N x 2^d float32 matrix alone is 16 GiB."""
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT.format(cls=cls)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_d18_forward_backward_peak_memory_under_1_5_gib() -> None:
    result = peak_rss_of("LFQ")
    assert "codebook_entropy" in result["losses"]
    assert result["peak_rss"] < 1.5 * GIB, f"peak RSS {result['peak_rss'] / GIB:.2f} GiB"


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of bits and codebook_size"),
        ({"bits": 4, "codebook_size": 16}, "exactly one"),
        ({"bits": 0}, "bits must be an int in"),
        ({"bits": 63}, "63"),
        ({"bits": True}, "True"),
        ({"codebook_size": 1000}, "power of two"),
        ({"bits": 4, "dim": 0}, "dim"),
        ({"bits": 4, "temperature": 0.0}, "temperature"),
        ({"bits": 4, "entropy_weight": -1.0}, "entropy_weight"),
        ({"bits": 4, "commitment_weight": float("nan")}, "commitment_weight"),
        ({"bits": 4, "codebook_entropy": "approx"}, "approx"),
        ({"bits": 4, "entropy_group_size": 0}, "entropy_group_size"),
        ({"bits": 30}, "grouped"),
    ],
)
def test_bad_arguments_raise_one_clear_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LFQ(**kwargs)


def test_wide_codes_work_with_the_grouped_bound_or_without_entropy() -> None:
    z = torch.randn(2, 40, 3)
    for quantizer in (LFQ(bits=40, codebook_entropy="grouped"), LFQ(bits=40, entropy_weight=0)):
        out = quantizer(z)
        assert out.indices.dtype == torch.int64 and int(out.indices.max()) < 2**40
