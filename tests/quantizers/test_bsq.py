"""BSQ (Zhao et al. 2024) against independent references: codes on the unit sphere and ids
against Python bit arithmetic for every d, the straight-through gradient against the
Jacobian of the normalisation, the entropy terms against a float64 softmax over all 2^d
codes on the sphere (tests/quantizers/binary_reference.py), the grouped bound, and the
peak memory at d = 18 in a fresh process."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.quantizers import binary_reference as ref
from tests.quantizers.test_lfq import GIB, peak_rss_of, rows_as_map
from vqtok.quantizers import BSQ

F64 = torch.float64


def entropy_only(bits: int, tau: float, **kwargs) -> BSQ:
    return BSQ(bits=bits, commitment_weight=0.0, entropy_weight=1.0, diversity_gamma=1.0,
               temperature=tau, **kwargs)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 62), seed=st.integers(0, 2**31 - 1))
def test_ids_round_trip_through_unit_codes_for_every_width(bits: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 2**bits, (2, 6), generator=gen, dtype=torch.int64)
    ids[1, 5] = 2**bits - 1
    quantizer = BSQ(bits=bits, entropy_weight=0.0).eval()
    codes = quantizer.indices_to_codes(ids)  # (2, d, 6)
    s = 1 / math.sqrt(bits)
    expected = [[[s if (k >> i) & 1 else -s for i in range(bits)] for k in row]
                for row in ids.tolist()]
    torch.testing.assert_close(codes.permute(0, 2, 1).to(F64), torch.tensor(expected, dtype=F64),
                               rtol=1e-7, atol=0)
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(2, 6))  # on the unit sphere
    out = quantizer(codes)
    assert torch.equal(out.indices, ids)
    assert torch.equal(out.z_q, codes)


@settings(max_examples=20, deadline=None)
@given(bits=st.integers(2, 20), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**31 - 1))
def test_quantization_ignores_the_norm_and_gives_the_sign_pattern(bits: int, scale: float,
                                                                   seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(25, bits, generator=gen)
    quantizer = BSQ(bits=bits, entropy_weight=0.0).eval()
    out = quantizer(rows_as_map(x))
    scaled = quantizer(rows_as_map(x * scale))
    assert torch.equal(out.indices, scaled.indices)
    assert torch.equal(out.z_q, scaled.z_q)
    assert out.indices[0].tolist() == ref.python_ids(x > 0)
    expected = torch.where(x > 0, 1.0, -1.0).to(F64) / math.sqrt(bits)
    torch.testing.assert_close(out.z_q[0].t().to(F64), expected, rtol=1e-7, atol=0)


def test_straight_through_on_the_sphere_gradient_and_commitment() -> None:
    """z_q = u + sg(q - u) with u = z / ||z||: the gradient is the normalisation's Jacobian
    applied to the upstream gradient, (g - u (u.g)) / ||z||."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(30, 7, generator=gen, dtype=F64) * 3
    g = torch.randn(30, 7, generator=gen, dtype=F64)
    z = rows_as_map(x.float()).requires_grad_(True)
    out = BSQ(bits=7, commitment_weight=0.5, entropy_weight=0.0)(z)
    (out.z_q * rows_as_map(g.float())).sum().backward()
    u = x / x.norm(dim=1, keepdim=True)
    expected = (g - u * (u * g).sum(1, keepdim=True)) / x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(z.grad[0].t().to(F64), expected, rtol=1e-5, atol=1e-6)
    q = torch.where(x > 0, 1.0, -1.0).to(F64) / math.sqrt(7)
    torch.testing.assert_close(out.losses["commitment"].to(F64), 0.5 * ((u - q) ** 2).mean(),
                               rtol=1e-5, atol=0)


@settings(max_examples=30, deadline=None)
@given(
    bits=st.integers(1, 12),
    n=st.integers(1, 48),
    tau=st.sampled_from([0.01, 0.1, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_entropy_terms_equal_the_brute_force_on_the_sphere(bits: int, n: int, tau: float,
                                                           seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, bits, generator=gen) + 0.3
    out = entropy_only(bits, tau)(rows_as_map(x))
    u = x.to(F64) / x.to(F64).norm(dim=1, keepdim=True)
    sample, batch, _ = ref.entropies(u, ref.all_codes(bits, 1 / math.sqrt(bits)), tau)
    torch.testing.assert_close(out.losses["sample_entropy"].to(F64), sample,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(-out.losses["codebook_entropy"].to(F64), batch,
                               rtol=1e-4, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(bits=st.integers(2, 12), group=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_grouped_bound_is_at_least_the_exact_batch_entropy(bits: int, group: int,
                                                           seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 1, generator=gen) + 0.5 * torch.randn(64, bits, generator=gen)
    tau = 0.05
    grouped = entropy_only(bits, tau, codebook_entropy="grouped", entropy_group_size=group)
    h_grouped = -grouped(rows_as_map(x)).losses["codebook_entropy"].to(F64)
    u = x.to(F64) / x.to(F64).norm(dim=1, keepdim=True)
    _, batch, mean = ref.entropies(u, ref.all_codes(bits, 1 / math.sqrt(bits)), tau)
    torch.testing.assert_close(h_grouped, ref.grouped_entropy(mean, bits, group),
                               rtol=1e-4, atol=1e-5)
    assert float(h_grouped) >= float(batch) - 1e-4


def test_defaults_are_the_released_configuration() -> None:
    quantizer = BSQ(bits=18)
    assert (quantizer.commitment_weight, quantizer.entropy_weight, quantizer.diversity_gamma,
            quantizer.temperature) == (0.0, 0.1, 1.0, 1.0)
    out = quantizer(torch.randn(1, 18, 4))
    assert set(out.losses) == {"sample_entropy", "codebook_entropy"}


@pytest.mark.slow  # 7 to 12 s; the default run checks the same entropy code through LFQ's
def test_d18_forward_backward_peak_memory_under_1_5_gib() -> None:
    result = peak_rss_of("BSQ")
    assert "codebook_entropy" in result["losses"]
    assert result["peak_rss"] < 1.5 * GIB, f"peak RSS {result['peak_rss'] / GIB:.2f} GiB"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"bits": 4, "codebook_size": 16}, "exactly one"),
    ({"codebook_size": 48}, "power of two"),
    ({"bits": 4, "temperature": -1.0}, "temperature"),
])
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BSQ(**kwargs)
