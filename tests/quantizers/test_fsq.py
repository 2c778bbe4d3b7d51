"""FSQ against an independent float64 re-implementation (Mentzer et al. 2023; docs/algorithms.md#fsq)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vqtok.quantizers import functional as Fq
from vqtok.quantizers.fsq import FSQ
from vqtok.registry import build, spec_of

# Mentzer et al. 2023, Table 1, as the paper lists them (not imported from the module).
PRESETS = {
    2**8: [8, 6, 5],
    2**10: [8, 5, 5, 5],
    2**12: [7, 5, 5, 5, 5],
    2**14: [8, 8, 8, 6, 5],
    2**16: [8, 8, 8, 5, 5, 5],
}


# ---- independent float64 reference ------------------------------------------------------
def _ref_bound(z: np.ndarray, levels: list[int]) -> np.ndarray:
    lv = np.asarray(levels, dtype=np.float64)
    half = (lv - 1) * (1 - 1e-3) / 2
    offset = np.where(lv % 2 == 0, 0.5, 0.0)
    return np.tanh(z + np.arctanh(offset / half)) * half - offset


def _ref_quantize(z: np.ndarray, levels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """float64 codes (N, d) and ids (N,): round (half to even, as torch), normalise,
    mixed radix with the first channel least significant."""
    lv = np.asarray(levels)
    level = np.round(_ref_bound(z, levels))  # integers in [-(L//2), ...]
    digits = (level + lv // 2).astype(np.int64)
    ids = np.ravel_multi_index(tuple(digits[:, ::-1].T), tuple(lv[::-1]))
    return level / (lv // 2), ids


def _ref_decode(ids: np.ndarray, levels: list[int]) -> np.ndarray:
    lv = np.asarray(levels)
    digits = np.stack(np.unravel_index(ids, tuple(lv[::-1]))[::-1], axis=1)  # (N, d)
    return (digits - lv // 2) / (lv // 2)


def _grid_inputs(ids: np.ndarray, levels: list[int]) -> np.ndarray:
    """Inputs z whose bound lands 0.2 from the integer level of each id's digits (inside
    the reachable range), through the inverse of the bound in float64."""
    lv = np.asarray(levels, dtype=np.float64)
    level = _ref_decode(ids, levels) * (lv.astype(np.int64) // 2)  # (N, d) integers
    target = level - 0.2 * np.sign(level)
    half = (lv - 1) * (1 - 1e-3) / 2
    offset = np.where(lv % 2 == 0, 0.5, 0.0)
    return np.arctanh((target + offset) / half) - np.arctanh(offset / half)


def _as_map(rows: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, d) rows -> (1, d, N) float32 map."""
    return torch.as_tensor(rows, dtype=torch.float32).t().reshape(1, rows.shape[1], -1)


def _rows(z: torch.Tensor) -> torch.Tensor:
    return z.movedim(1, -1).reshape(-1, z.shape[1])


# ---- presets and round trips --------------------------------------------------------------
@pytest.mark.parametrize("size", list(PRESETS))
def test_every_preset_round_trips_every_id(size: int) -> None:
    q = FSQ(codebook_size=size)
    levels = PRESETS[size]
    assert q.levels.tolist() == levels and q.codebook_size == math.prod(levels)
    ids = np.arange(math.prod(levels))
    codes = q.indices_to_codes(torch.as_tensor(ids).reshape(1, -1))  # (1, d, N)
    rows = _rows(codes)
    # index -> code matches the independent decode, and code -> index is exact
    assert np.array_equal(rows.numpy(), _ref_decode(ids, levels).astype(np.float32))
    assert torch.equal(Fq.fsq_codes_to_indices(rows, q.levels), torch.as_tensor(ids))
    # forward reaches every id: inputs aimed at each grid point come back as that id
    out = q(_as_map(_grid_inputs(ids, levels)))
    assert torch.equal(out.indices.reshape(-1), torch.as_tensor(ids))
    assert torch.equal(out.z_q, codes)


def test_codes_to_index_to_codes_is_exact() -> None:
    levels = [7, 6, 3, 2]
    q = FSQ(levels)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in levels], indexing="ij"), -1)
    digits = grid.reshape(-1, len(levels))  # every code once, (N, d)
    codes = torch.as_tensor((digits - np.asarray(levels) // 2) / (np.asarray(levels) // 2),
                            dtype=torch.float32)
    ids = Fq.fsq_codes_to_indices(codes, q.levels)
    assert sorted(ids.tolist()) == list(range(math.prod(levels)))
    assert torch.equal(_rows(q.indices_to_codes(ids.reshape(1, -1))), codes)


def test_dense_random_sweep_covers_the_codebook() -> None:
    q = FSQ([5, 4, 3])
    z = 2.0 * torch.randn(1, 3, 20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(q(z).indices.unique(), torch.arange(60))


@pytest.mark.parametrize(
    "levels",
    [
        [8, 6, 5, 4, 3],
        [2, 3, 2],
    ],
)
def test_each_channel_takes_exactly_its_levels(levels: list[int]) -> None:
    q = FSQ(levels)
    z = 3.0 * torch.randn(1, len(levels), 30000, generator=torch.Generator().manual_seed(1))
    rows = _rows(q(z).z_q)
    for i, n in enumerate(levels):
        expected = torch.tensor([(k - n // 2) / (n // 2) for k in range(n)]).float()
        assert torch.equal(rows[:, i].unique(), expected)


# ---- numerics -----------------------------------------------------------------------------
def test_matches_float64_reference() -> None:
    levels = [8, 5, 5, 5, 7, 6]
    q = FSQ(levels)
    z = 1.5 * np.random.default_rng(2).standard_normal((20000, 6))
    out = q(_as_map(z))
    z32 = z.astype(np.float32).astype(np.float64)  # the exact values the module saw
    codes_ref, ids_ref = _ref_quantize(z32, levels)
    frac = np.abs(_ref_bound(z32, levels) % 1.0 - 0.5)
    clear = (frac > 1e-4).all(axis=1)  # rows with no channel at a rounding boundary
    assert clear.mean() > 0.99
    assert np.array_equal(out.indices.reshape(-1).numpy()[clear], ids_ref[clear])
    assert np.array_equal(_rows(out.z_q).numpy()[clear], codes_ref[clear].astype(np.float32))


def test_zero_input_is_code_zero() -> None:
    odd = torch.tensor([7, 5, 3])
    assert torch.equal(Fq.fsq_bound(torch.zeros(4, 3), odd), torch.zeros(4, 3))
    for levels in ([7, 5, 3], [8, 6, 4], [8, 5, 5, 5]):
        out = FSQ(levels)(torch.zeros(2, len(levels), 3))
        assert torch.equal(out.z_q, torch.zeros_like(out.z_q))
        centre = sum((n // 2) * math.prod(levels[:i]) for i, n in enumerate(levels))
        assert bool((out.indices == centre).all())


@pytest.mark.parametrize("magnitude", [1e6, 1e30])
def test_huge_inputs_stay_in_range(magnitude: float) -> None:
    levels = [8, 5, 5, 5]
    q = FSQ(levels)
    signs = torch.tensor([[1.0, 1, 1, 1], [-1, -1, -1, -1], [1, -1, 1, -1]])
    out = q(_as_map(signs * magnitude))
    assert bool(torch.isfinite(out.z_q).all()) and out.z_q.abs().max() <= 1
    # +inf-like picks the top level of every channel, -inf-like the bottom one
    ids = out.indices.reshape(-1).tolist()
    assert ids[0] == math.prod(levels) - 1 and ids[1] == 0
    assert ids[2] == (8 - 1) + 0 * 8 + (5 - 1) * 40 + 0 * 200


def test_gradient_is_the_bound_derivative() -> None:
    levels = [8, 5, 3]
    q = FSQ(levels)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 3, 7, generator=gen).requires_grad_()
    g = torch.randn(2, 3, 7, generator=gen)
    (q(z).z_q * g).sum().backward()
    lv = torch.tensor(levels, dtype=torch.float64)
    half = (lv - 1) * (1 - 1e-3) / 2
    shift = torch.atanh(torch.where(lv % 2 == 0, 0.5, 0.0) / half)
    rows = _rows(z.detach()).double()
    # round is straight-through: d code / dz = half (1 - tanh^2(z + shift)) / (L // 2)
    deriv = half * (1 - torch.tanh(rows + shift).pow(2)) / (lv // 2)
    assert torch.allclose(_rows(z.grad).double(), _rows(g).double() * deriv, rtol=1e-5)


@pytest.mark.parametrize("dim", [None, 12])
def test_bf16_autocast_gives_the_float32_indices(dim: int | None) -> None:
    torch.manual_seed(4)
    levels = [8, 5, 5, 5]
    q = FSQ(levels, dim=dim)
    width = dim or len(levels)
    z = (1.5 * torch.randn(4, width, 32, 32)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = q(z)
    ref = q(z.float())
    assert torch.equal(low.indices, ref.indices)
    assert low.z_q.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        decoded = q.indices_to_codes(ref.indices)
    assert decoded.dtype == torch.float32 and torch.equal(decoded, q.indices_to_codes(ref.indices))
    # why the quantizer computes in float32: the same maths in bf16 picks other codes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = q.project_in(_rows(z))
        bf16_ids = Fq.fsq_codes_to_indices(Fq.fsq_quantize(h.bfloat16(), q.levels), q.levels)
    assert (bf16_ids != ref.indices.reshape(-1)).sum() > 0


# ---- projection and contract --------------------------------------------------------------
def test_projection_path() -> None:
    torch.manual_seed(5)
    levels = [8, 5, 5, 5]
    q = FSQ(levels, dim=16).eval()
    assert isinstance(q.project_in, torch.nn.Linear) and q.project_in.in_features == 16
    assert q.project_in.out_features == 4 and q.project_out.out_features == 16
    z = torch.randn(2, 16, 6, 5)
    with torch.no_grad():
        out = q(z)
    assert out.z_q.shape == z.shape and out.indices.shape == (2, 6, 5)
    assert out.losses == {}
    assert torch.equal(q.indices_to_codes(out.indices), out.z_q)
    # ids follow the float64 reference applied to the projected rows
    w, b = q.project_in.weight.double(), q.project_in.bias.double()
    h = (_rows(z).double() @ w.t() + b).detach().numpy()
    _, ids_ref = _ref_quantize(h, levels)
    clear = (np.abs(_ref_bound(h, levels) % 1.0 - 0.5) > 1e-4).all(axis=1)
    assert np.array_equal(out.indices.reshape(-1).numpy()[clear], ids_ref[clear])
    # gradients reach both projections
    q.train()
    zg = z.clone().requires_grad_()
    q(zg).z_q.square().sum().backward()
    assert q.project_in.weight.grad.abs().max() > 0 and q.project_out.weight.grad.abs().max() > 0
    assert zg.grad.abs().max() > 0


def test_no_projection_when_dim_equals_levels() -> None:
    q = FSQ([5, 5, 5], dim=3)
    assert isinstance(q.project_in, torch.nn.Identity) and len(list(q.parameters())) == 0
    assert "levels" in dict(q.named_buffers()) and "levels" not in q.state_dict()


@settings(max_examples=20, deadline=None)
@given(
    spatial=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    batch=st.integers(1, 3),
    dim=st.sampled_from([None, 2, 7]),
)
def test_any_spatial_rank(spatial: list[int], batch: int, dim: int | None) -> None:
    torch.manual_seed(6)
    q = FSQ([6, 3, 4], dim=dim).eval()
    width = dim or 3
    z = 2.0 * torch.randn(batch, width, *spatial)
    with torch.no_grad():
        out = q(z)
    assert out.z_q.shape == z.shape and out.indices.shape == (batch, *spatial)
    assert out.indices.dtype == torch.int64
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < 72
    assert torch.equal(q.indices_to_codes(out.indices), out.z_q)


def test_registry_rebuilds_the_same_quantizer() -> None:
    q = FSQ(codebook_size=2**12, dim=9)
    rebuilt = build(spec_of(q))
    assert isinstance(rebuilt, FSQ) and rebuilt.levels.tolist() == [7, 5, 5, 5, 5]
    assert rebuilt.dim == 9 and rebuilt.codebook_size == 4375


# ---- configuration errors -----------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"levels": [8, 5], "codebook_size": 2**8},
        {"codebook_size": 1000},
        {"codebook_size": 2**9},
        {"levels": []},
        {"levels": [8, 1, 5]},
        {"levels": [8, 0]},
        {"levels": [8, 2.5]},
        {"levels": [8, True]},
        {"levels": [8, 5], "dim": 0},
    ],
)
def test_invalid_configuration_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FSQ(**kwargs)


def test_unknown_codebook_size_lists_the_presets() -> None:
    with pytest.raises(ValueError, match=r"256.*\[8, 6, 5\].*65536.*\[8, 8, 8, 5, 5, 5\]"):
        FSQ(codebook_size=4096 + 1)


def test_finite_map_whose_sum_overflows_is_accepted() -> None:
    # The input check sums the map first; an overflowing sum of finite values must fall
    # back to the exact check instead of being reported as non-finite.
    z = torch.full((1, 4, 64, 64), 3e38)
    assert not torch.isfinite(z.sum())
    out = FSQ([8, 5, 5, 5])(z)
    assert torch.isfinite(out.z_q).all()
    z[0, 2, 5, 7] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        FSQ([8, 5, 5, 5])(z)
