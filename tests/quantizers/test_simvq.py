"""SimVQ against float64 references and the paper's claims (Zhu et al. 2024; docs/algorithms.md#simvq)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vqtok.quantizers.simvq import SimVQ
from vqtok.registry import build, spec_of


def _rows(z: torch.Tensor) -> torch.Tensor:
    """(B, D, *spatial) -> (N, D), written independently of the library's reshape."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def _nearest_f64(rows: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Brute-force float64 nearest codes and the smallest best-vs-second distance gap."""
    dist = torch.cdist(rows.double(), codebook.double()).pow(2)  # (N, K), small in tests
    two = dist.topk(2, dim=1, largest=False).values
    return dist.argmin(dim=1), float((two[:, 1] - two[:, 0]).min())


def _make(seed: int = 0, **kwargs) -> SimVQ:
    torch.manual_seed(seed)
    return SimVQ(**kwargs)


# ---- W = I is plain VQ on the frozen codebook C ------------------------------------------
def test_identity_map_equals_vq_on_frozen_codebook() -> None:
    q = _make(codebook_size=64, dim=8, init="identity").train()
    torch.manual_seed(1)
    z = (0.5 * torch.randn(3, 8, 5, 4)).requires_grad_()
    out = q(z)

    c = q.frozen_codebook.double()
    rows = _rows(z.detach()).double()
    ids_ref, gap = _nearest_f64(rows, c)
    assert gap > 1e-6  # no near-ties, so float32 and float64 must agree
    assert torch.equal(out.indices.reshape(-1), ids_ref)
    # z_q carries the codes (up to the STE's rounding z + (q - z))
    assert torch.allclose(_rows(out.z_q.detach()).double(), c[ids_ref], atol=1e-6)
    mse = (rows - c[ids_ref]).pow(2).mean()
    assert set(out.losses) == {"codebook", "commitment"}
    assert math.isclose(float(out.losses["codebook"].detach()), float(mse), rel_tol=1e-5)
    assert math.isclose(float(out.losses["commitment"].detach()), 0.25 * float(mse), rel_tol=1e-5)


def test_losses_use_their_weights_and_route_gradients() -> None:
    q = _make(codebook_size=32, dim=4, init="identity", codebook_weight=2.0,
              commitment_weight=0.5).train()
    z = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(2)).requires_grad_()
    out = q(z)
    rows, codes = _rows(z.detach()).double(), q.frozen_codebook.double()[out.indices.reshape(-1)]
    mse = float((rows - codes).pow(2).mean())
    assert math.isclose(float(out.losses["codebook"].detach()), 2.0 * mse, rel_tol=1e-5)
    assert math.isclose(float(out.losses["commitment"].detach()), 0.5 * mse, rel_tol=1e-5)
    # the codebook term trains W only, the commitment term the encoder only
    (g_w,) = torch.autograd.grad(out.losses["codebook"], [q.projection.weight])
    assert g_w.abs().max() > 0
    (g_z,) = torch.autograd.grad(out.losses["commitment"], [z])
    expected = 2 * 0.5 * (rows - codes) / rows.numel()  # d/dz of 0.5 * mean((z - q)^2)
    assert torch.allclose(_rows(g_z).double(), expected, atol=1e-7)
    out = q(z)
    assert torch.autograd.grad(out.losses["codebook"], [z], allow_unused=True) == (None,)
    assert torch.autograd.grad(out.losses["commitment"], [q.projection.weight],
                               allow_unused=True) == (None,)


# ---- the frozen codebook never moves -------------------------------------------------------
def test_frozen_codebook_gets_no_gradient_and_is_saved() -> None:
    q = _make(codebook_size=32, dim=4, init="identity", bias=True).train()
    assert "frozen_codebook" in q.state_dict()
    assert all(p is not q.frozen_codebook for p in q.parameters())
    before_c, before_w = q.frozen_codebook.clone(), q.projection.weight.detach().clone()
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    z = torch.randn(4, 4, 5, generator=torch.Generator().manual_seed(3))
    sum(q(z).losses.values()).backward()
    assert q.frozen_codebook.grad is None and not q.frozen_codebook.requires_grad
    opt.step()
    assert torch.equal(q.frozen_codebook, before_c)
    assert not torch.equal(q.projection.weight, before_w)


def test_loaded_model_reproduces_codebook_exactly() -> None:
    q = _make(seed=0, codebook_size=50, dim=6, bias=True).train()
    q(torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(4)))  # data init
    clone = _make(seed=123, **spec_of(q)["init_args"])  # a different C before loading
    assert not torch.equal(clone.frozen_codebook, q.frozen_codebook)
    clone.load_state_dict(q.state_dict())
    ids = torch.arange(50).reshape(2, 25)
    assert torch.equal(clone.indices_to_codes(ids), q.indices_to_codes(ids))
    rebuilt = build(spec_of(q))
    assert isinstance(rebuilt, SimVQ) and rebuilt.init_args == q.init_args


# ---- one step on a subset S moves every code (the paper's point) -------------------------
def test_step_on_a_subset_moves_codes_outside_it_unlike_plain_vq() -> None:
    k, d, lr = 32, 4, 0.5
    q = _make(codebook_size=k, dim=d, init="identity").train()
    c = q.frozen_codebook.clone()
    subset = torch.tensor([3, 7, 11])
    gen = torch.Generator().manual_seed(5)
    rows = c[subset].repeat(4, 1) + 0.01 * torch.randn(12, d, generator=gen)  # (N, d)
    z = rows.t().reshape(1, d, 12)  # (1, d, N)

    out = q(z)
    ids = out.indices.reshape(-1)
    assert set(ids.tolist()) == set(subset.tolist())
    q.zero_grad()
    out.losses["codebook"].backward()
    # hand gradient of mean((c_k W^T - z)^2) w.r.t. W (nn.Linear layout), float64
    c64, r64 = c.double(), rows.double()
    resid = c64[ids] - r64  # (N, d): q - z with W = I
    grad_ref = 2.0 / resid.numel() * resid.t() @ c64[ids]  # (d, d)
    assert torch.allclose(q.projection.weight.grad.double(), grad_ref, atol=1e-9)

    torch.optim.SGD(q.parameters(), lr=lr).step()
    moved = (q.effective_codebook().detach().double() - c64).norm(dim=1)  # (K,)
    outside = torch.ones(k, dtype=torch.bool)
    outside[subset] = False
    predicted = c64 @ (torch.eye(d, dtype=torch.float64) - lr * grad_ref).t()
    assert torch.allclose(q.effective_codebook().detach().double(), predicted, atol=1e-6)
    assert bool((moved[outside] > 1e-5).all())  # every unselected code moved

    # plain VQ with a gradient codebook: the same loss leaves unselected codes untouched
    codebook = torch.nn.Parameter(c.clone())
    F.mse_loss(codebook[ids], rows).backward()
    assert bool((codebook.grad[outside] == 0).all())
    torch.optim.SGD([codebook], lr=lr).step()
    assert torch.equal(codebook.detach()[outside], c[outside])
    assert bool(((codebook.detach() - c).norm(dim=1)[subset] > 0).all())


# ---- decoding applies W -------------------------------------------------------------------
def test_indices_to_codes_applies_w_and_matches_forward() -> None:
    q = _make(codebook_size=40, dim=5, bias=True, init="random")
    with torch.no_grad():
        q.projection.bias.normal_()
    ids = torch.randint(0, 40, (3, 4, 2), generator=torch.Generator().manual_seed(6))
    codes = q.indices_to_codes(ids)
    assert codes.shape == (3, 5, 4, 2)
    w, b = q.projection.weight.double(), q.projection.bias.double()
    expected = q.frozen_codebook.double()[ids.reshape(-1)] @ w.t() + b  # (N, d)
    assert torch.allclose(_rows(codes).double(), expected, atol=1e-5)
    assert not torch.allclose(_rows(codes).double(), q.frozen_codebook.double()[ids.reshape(-1)])

    q.eval()
    z = torch.randn(3, 5, 4, 2, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = q(z)
    assert torch.equal(q.indices_to_codes(out.indices), out.z_q)  # bit-exact in eval mode


@settings(max_examples=15, deadline=None)
@given(
    spatial=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    batch=st.integers(1, 3),
    chunk=st.one_of(st.none(), st.integers(1, 7)),
)
def test_any_spatial_rank_and_chunking(spatial: list[int], batch: int, chunk: int | None) -> None:
    q = _make(codebook_size=24, dim=3, init="random", bias=True, chunk_rows=chunk).eval()
    z = torch.randn(batch, 3, *spatial, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        out = q(z)
    assert out.z_q.shape == z.shape and out.indices.shape == (batch, *spatial)
    assert out.indices.dtype == torch.int64
    ids_ref, gap = _nearest_f64(_rows(z), q.effective_codebook().detach())
    if gap > 1e-5:
        assert torch.equal(out.indices.reshape(-1), ids_ref)
    assert torch.equal(q.indices_to_codes(out.indices), out.z_q)


# ---- gradient estimators ----------------------------------------------------------------
def test_rotation_changes_gradient_not_forward() -> None:
    ste = _make(codebook_size=64, dim=6, init="random", grad_estimator="ste").train()
    rot = _make(codebook_size=64, dim=6, init="random", grad_estimator="rotation").train()
    rot.load_state_dict(ste.state_dict())
    gen = torch.Generator().manual_seed(9)
    z0 = torch.randn(2, 6, 5, 5, generator=gen)
    g = torch.randn(2, 6, 5, 5, generator=gen)
    grads, outs = [], []
    for q in (ste, rot):
        z = z0.clone().requires_grad_()
        out = q(z)
        (out.z_q * g).sum().backward()
        grads.append(z.grad)
        outs.append(out)
    assert torch.equal(outs[0].indices, outs[1].indices)
    assert torch.allclose(outs[0].z_q, outs[1].z_q, atol=1e-6)
    for name in ("codebook", "commitment"):
        assert torch.equal(outs[0].losses[name], outs[1].losses[name])
    assert torch.equal(grads[0], g)  # STE passes g through untouched
    assert (grads[1] - g).abs().max() > 1e-2  # rotation does not
    # rotation trick: ||grad_e|| = (||q|| / ||e||) ||g|| row by row (Fifty et al. 2024)
    codes = _rows(ste.indices_to_codes(outs[0].indices).detach()).double()
    lam = codes.norm(dim=1) / _rows(z0).double().norm(dim=1)
    assert torch.allclose(_rows(grads[1]).double().norm(dim=1),
                          lam * _rows(g).double().norm(dim=1), rtol=1e-4)


# ---- data-dependent init ----------------------------------------------------------------
def _anisotropic_batch(seed: int, d: int, scale: float, centre: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen) * scale
    rows = torch.randn(2048, d, generator=gen) @ mix + centre  # (N, d)
    return rows.t().reshape(1, d, 2048)


@pytest.mark.parametrize("bias", [True, False])
def test_data_init_matches_the_batch_moments(bias: bool) -> None:
    d, k = 8, 4096
    q = _make(codebook_size=k, dim=d, bias=bias).train()
    z = _anisotropic_batch(10, d, scale=0.02, centre=0.05)
    q(z)
    rows = _rows(z).double()
    mean = rows.mean(0)
    centred = rows - mean if bias else rows
    target = centred.t() @ centred / rows.shape[0]  # covariance, or second moment w/o bias
    w = q.projection.weight.double()
    # exact identity of the init: W W^T / d = S, W symmetric
    assert torch.allclose(w @ w.t() / d, target, rtol=1e-4, atol=1e-10)
    assert torch.allclose(w, w.t(), atol=1e-9)
    if bias:
        assert torch.allclose(q.projection.bias.double(), mean, atol=1e-7)
    # and therefore the K codes sit at the data's scale (sampling error of K Gaussians)
    codes = q.effective_codebook().detach().double()
    codes_moment = (codes - mean).t() @ (codes - mean) / k if bias else codes.t() @ codes / k
    rel = (codes_moment - target).norm() / target.norm()
    assert rel < 0.1
    assert math.isclose(codes.pow(2).mean().sqrt(), rows.pow(2).mean().sqrt(), rel_tol=0.1)


def test_data_init_uses_many_codes_at_step_one() -> None:
    """Small-scale encoder outputs (std 0.01) against K = 1024 codes of dim 16.

    Measured: data init 860 codes, W = I 9 codes, nn.Linear default 6 codes."""
    torch.manual_seed(11)
    z = 0.01 * torch.randn(16, 16, 16, 16)  # 4096 rows
    used = {}
    for init in ("data", "identity", "random"):
        q = _make(codebook_size=1024, dim=16, init=init).train()
        used[init] = q(z).indices.unique().numel()
    assert used["data"] > 600
    assert used["identity"] < 30 and used["random"] < 30


def test_data_init_once_only_in_training_and_not_after_loading() -> None:
    q = _make(codebook_size=32, dim=4, bias=True)
    z = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(12))
    q.eval()(z)
    assert not bool(q.initialized)
    assert torch.equal(q.projection.weight, torch.eye(4))
    q.train()(z)
    assert bool(q.initialized)
    w = q.projection.weight.detach().clone()
    q(10.0 * z + 3.0)  # a second training batch does not re-initialise
    assert torch.equal(q.projection.weight, w)
    assert "initialized" in q.state_dict()

    fresh = _make(seed=1, codebook_size=32, dim=4, bias=True)
    fresh.load_state_dict(q.state_dict())
    fresh.train()(10.0 * z + 3.0)
    assert torch.equal(fresh.projection.weight, w)

    # loading a state dict that was never initialised re-arms the data init
    fresh.load_state_dict(_make(seed=2, codebook_size=32, dim=4, bias=True).state_dict())
    assert torch.equal(fresh.projection.weight, torch.eye(4))
    fresh(z)
    assert bool(fresh.initialized) and torch.equal(fresh.projection.weight, w)


def _ddp_worker(rank: int, world: int, init_file: str, result_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        torch.manual_seed(0)
        q = SimVQ(codebook_size=16, dim=3, bias=True).train()
        gen = torch.Generator().manual_seed(100 + rank)
        z = (rank + 1.0) * torch.randn(1, 3, 50, generator=gen) + rank  # ranks differ
        q(z)
        torch.save({"weight": q.projection.weight.detach(), "bias": q.projection.bias.detach(),
                    "z": z}, os.path.join(result_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_data_init_is_identical_across_two_gloo_ranks(tmp_path) -> None:
    world = 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    res = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(world)]
    assert torch.equal(res[0]["weight"], res[1]["weight"])
    assert torch.equal(res[0]["bias"], res[1]["bias"])
    # and equal to the moments of both ranks' rows together
    rows = torch.cat([_rows(r["z"]) for r in res]).double()
    mean = rows.mean(0)
    cov = (rows - mean).t() @ (rows - mean) / rows.shape[0]
    w = res[0]["weight"].double()
    assert torch.allclose(res[0]["bias"].double(), mean, atol=1e-6)
    assert torch.allclose(w @ w.t() / 3, cov, rtol=1e-4, atol=1e-8)


def test_data_init_reduces_statistics_over_ranks(monkeypatch) -> None:
    """Two ranks simulated in one process: all_reduce adds the other rank's statistics.
    (The same check with two real gloo processes is the slow test above.)"""
    import vqtok.quantizers.simvq as simvq_module

    gen = torch.Generator().manual_seed(13)
    batches = [torch.randn(1, 3, 40, generator=gen), 2.0 * torch.randn(1, 3, 60, generator=gen) + 1]
    local: list[torch.Tensor] = []
    other: list[torch.Tensor] = []

    def all_reduce(tensor: torch.Tensor, op=None) -> None:
        local.append(tensor.clone())
        if other:
            tensor.add_(other[0])

    dist = simvq_module.dist
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    for z in batches:  # record each rank's own statistics
        _make(codebook_size=16, dim=3, bias=True).train()(z)
    stats = local[:]
    weights, biases = [], []
    for rank, z in enumerate(batches):
        other[:] = [stats[1 - rank]]
        q = _make(codebook_size=16, dim=3, bias=True).train()
        q(z)
        weights.append(q.projection.weight.detach())
        biases.append(q.projection.bias.detach())
    assert torch.equal(weights[0], weights[1]) and torch.equal(biases[0], biases[1])
    rows = torch.cat([_rows(z) for z in batches]).double()
    mean = rows.mean(0)
    cov = (rows - mean).t() @ (rows - mean) / rows.shape[0]
    w = weights[0].double()
    assert torch.allclose(biases[0].double(), mean, atol=1e-6)
    assert torch.allclose(w @ w.t() / 3, cov, rtol=1e-4, atol=1e-8)


# ---- configuration errors ---------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"codebook_size": 0, "dim": 4},
        {"codebook_size": 8, "dim": 0},
        {"codebook_size": 8, "dim": 4, "grad_estimator": "gumbel"},
        {"codebook_size": 8, "dim": 4, "init": "kmeans"},
        {"codebook_size": 8, "dim": 4, "commitment_weight": -1.0},
        {"codebook_size": 8, "dim": 4, "codebook_weight": float("nan")},
        {"codebook_size": 8, "dim": 4, "chunk_rows": 0},
    ],
)
def test_invalid_configuration_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SimVQ(**kwargs)


def test_bad_input_and_ids_raise() -> None:
    q = _make(codebook_size=8, dim=4)
    with pytest.raises(ValueError, match="channels"):
        q(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="ids must lie"):
        q.indices_to_codes(torch.tensor([[0, 8]]))
