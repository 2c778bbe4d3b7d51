"""VectorQuantizer against hand computations (docs/algorithms.md#vq-vae-losses and after): the VQ-VAE losses and
where their gradients go, the EMA update with Laplace smoothing over two steps, dead-code
restart, data-dependent init, cosine codes, state round trips, the rotation estimator,
and (slow) codebook agreement across two gloo ranks."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from vqtok.quantizers.vq import VectorQuantizer

F64 = torch.float64


def _rows(z: torch.Tensor) -> torch.Tensor:
    """(B, D, *spatial) -> (N, D), written independently of the library's reshape."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def _map(rows: torch.Tensor, batch: int, *spatial: int) -> torch.Tensor:
    """(N, D) -> (B, D, *spatial), the inverse of _rows."""
    return rows.reshape(batch, *spatial, rows.shape[1]).movedim(-1, 1).contiguous()


def _nearest_f64(rows: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, float]:
    """float64 brute-force nearest codes and the smallest best-vs-second distance gap."""
    dist = (rows.double()[:, None, :] - codebook.double()[None, :, :]).pow(2).sum(-1)  # (N, K)
    two = dist.topk(2, dim=1, largest=False).values
    return dist.argmin(dim=1), float((two[:, 1] - two[:, 0]).min())


def _make(seed: int = 0, **kwargs) -> VectorQuantizer:
    torch.manual_seed(seed)
    return VectorQuantizer(**kwargs)


def _state(q: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in q.state_dict().items()}


# ---- losses and where their gradients go (gradient mode) ---------------------------------------
def test_losses_match_hand_computation() -> None:
    q = _make(
        codebook_size=32, dim=4, init="normal", codebook_weight=2.0, commitment_weight=0.5
    ).train()
    codebook = q.codebook.detach().clone()
    z = torch.randn(2, 4, 5, 3, generator=torch.Generator().manual_seed(1))
    out = q(z)
    assert torch.equal(q.codebook.detach(), codebook)  # init="normal" leaves the codes alone
    rows = _rows(z).double()
    ids, gap = _nearest_f64(rows, codebook)
    assert gap > 1e-5
    assert torch.equal(out.indices.reshape(-1), ids)
    assert out.indices.shape == (2, 5, 3)
    assert torch.equal(_rows(out.z_q.detach()), codebook[ids])  # STE value is q bit for bit
    mse = float((rows - codebook.double()[ids]).pow(2).mean())
    assert set(out.losses) == {"codebook", "commitment"}
    # codebook = w_c mean((sg(z) - q)^2), commitment = w_m mean((z - sg(q))^2)
    assert math.isclose(float(out.losses["codebook"].detach()), 2.0 * mse, rel_tol=1e-6)
    assert math.isclose(float(out.losses["commitment"].detach()), 0.5 * mse, rel_tol=1e-6)


def test_codebook_learns_only_from_codebook_loss_and_encoder_from_estimator_and_commitment() -> (
    None
):
    w_c, w_m = 1.5, 0.25
    q = _make(
        codebook_size=16, dim=3, init="normal", codebook_weight=w_c, commitment_weight=w_m
    ).train()
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(2, 3, 4, 4, generator=gen).requires_grad_()
    g = torch.randn(2, 3, 4, 4, generator=gen)
    out = q(z)
    rows, codebook = _rows(z.detach()).double(), q.codebook.detach().double()
    ids = out.indices.reshape(-1)
    n_el = rows.numel()

    def grads(value: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return torch.autograd.grad(value, [q.codebook, z], retain_graph=True, allow_unused=True)

    # decoder path: the estimator sends g to the encoder unchanged, nothing to the codebook
    g_code, g_z = grads((out.z_q * g).sum())
    assert g_code is None
    assert torch.equal(g_z, g)
    # commitment: encoder only, d/dz w_m mean((z - q)^2) = 2 w_m (z - q) / n
    g_code, g_z = grads(out.losses["commitment"])
    assert g_code is None
    expected_z = 2 * w_m * (rows - codebook[ids]) / n_el
    assert torch.allclose(_rows(g_z).double(), expected_z, atol=1e-8)
    # codebook loss: codebook only, d/de_k = 2 w_c sum_{i -> k} (e_k - z_i) / n
    g_code, g_z = grads(out.losses["codebook"])
    assert g_z is None
    expected_code = torch.zeros_like(codebook)
    for i, k in enumerate(ids.tolist()):
        expected_code[k] += 2 * w_c * (codebook[k] - rows[i]) / n_el
    assert torch.allclose(g_code.double(), expected_code, atol=1e-8)
    unused = torch.ones(16, dtype=torch.bool)
    unused[ids] = False
    assert bool(unused.any()) and bool((g_code[unused] == 0).all())


# ---- EMA codebook --------------------------------------------------------------------------------
def test_ema_update_equals_hand_computation_over_two_steps() -> None:
    k, d, decay, eps = 8, 3, 0.9, 1e-3
    q = _make(codebook_size=k, dim=d, init="normal", ema_decay=decay, ema_eps=eps).train()
    assert list(q.parameters()) == []  # the codebook is a buffer moved by the EMA only
    with torch.no_grad():
        q.codebook[6:] += 50.0  # two codes no row picks: the smoothing acts on zero counts
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(2, d, 4, 5, generator=gen), 1.5 * torch.randn(3, d, 2, 5, generator=gen)]

    # reference state after the init of docs/algorithms.md#codebook-init-and-restart as vq.py seeds it: every code
    # holds its fair share N/K of the first batch's rows, m_k = e_k N_k
    codebook = q.codebook.detach().double().clone()  # (K, D) N(0, 1) draws
    n_first = _rows(batches[0]).shape[0]
    ema_n = torch.full((k,), n_first / k, dtype=F64)
    ema_m = codebook * ema_n[:, None]
    for z in batches:
        out = q(z)
        assert set(out.losses) == {"commitment"}  # no codebook loss in EMA mode
        rows = _rows(z).double()
        ids, gap = _nearest_f64(rows, codebook)
        assert gap > 1e-5
        assert torch.equal(out.indices.reshape(-1), ids)
        one_hot = (ids[:, None] == torch.arange(k)[None, :]).double()  # (N, K)
        n_k, s_k = one_hot.sum(0), one_hot.t() @ rows
        assert bool((n_k == 0).any())  # some code unused: the smoothing matters
        ema_n = decay * ema_n + (1 - decay) * n_k
        ema_m = decay * ema_m + (1 - decay) * s_k
        total = ema_n.sum()
        smoothed = (ema_n + eps) / (total + k * eps) * total  # Laplace smoothing
        codebook = ema_m / smoothed[:, None]
        assert torch.allclose(q.ema_count.double(), ema_n, rtol=1e-6)
        assert torch.allclose(q.ema_sum.double(), ema_m, rtol=1e-5, atol=1e-6)
        assert torch.allclose(q.codebook.double(), codebook, rtol=1e-5, atol=1e-6)
        codebook = q.codebook.double().clone()  # the next search runs on the module's codes


# ---- dead-code restart ---------------------------------------------------------------------------
@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_dead_codes_are_restarted_onto_batch_rows_and_then_used(ema_decay: float | None) -> None:
    k, d = 16, 4
    kwargs = {"codebook_size": k, "dim": d, "init": "normal", "ema_decay": ema_decay}
    restart = _make(restart_threshold=0.1, usage_decay=0.5, **kwargs).train()
    control = _make(**kwargs).train()
    with torch.no_grad():
        for q in (restart, control):
            q.codebook[8:] += 1000.0  # codes 8..15 far from every row: never chosen
    dead = torch.arange(8, 16)
    gen = torch.Generator().manual_seed(4)
    used_before, used_control = set(), set()
    for step in range(6):
        z = torch.randn(2, d, 4, 4, generator=gen)
        before = restart.codebook.detach().clone()
        ids = restart(z).indices.reshape(-1)
        used_control |= set(control(z).indices.reshape(-1).tolist())
        # usage starts at 1 and halves each step without rows: under 0.1 after 4 steps
        if step < 4:
            assert bool((before[dead].norm(dim=1) > 100).all())
            used_before |= set(ids.tolist())
        else:
            break
    assert used_before.isdisjoint(dead.tolist())
    # step 4 restarted the dead codes onto rows of its own batch before the search,
    # so each of them was used in that very step
    rows = _rows(z)
    assert set(dead.tolist()) <= set(ids.tolist())
    codes = before if ema_decay is not None else restart.codebook.detach()
    if ema_decay is None:  # gradient mode: the codebook only moves by the restart
        match = (codes[dead][:, None, :] == rows[None, :, :]).all(-1)  # (8, N)
        assert bool(match.any(1).all())
        assert len({int(i) for i in match.float().argmax(1)}) == 8  # eight different rows
    assert bool((restart.codebook.detach().norm(dim=1) < 20).all())
    # their usage was reset to 1 at the restart, then took this step's rate N_k K / N
    counts = torch.bincount(ids, minlength=k).double()
    rate = counts * k / ids.numel()
    assert torch.allclose(restart.usage[dead].double(), 0.5 * 1.0 + 0.5 * rate[dead])
    # without restart the far codes stay dead over the same batches
    assert used_control.isdisjoint(dead.tolist())
    assert bool((control.codebook.detach()[dead].norm(dim=1) > 100).all())


def _recording_restarts(q: VectorQuantizer) -> list[dict[str, torch.Tensor]]:
    """Wrap q.restart_dead_codes: after each call, the state the search then runs on."""
    log: list[dict[str, torch.Tensor]] = []
    restart = q.restart_dead_codes

    def recorded(rows: torch.Tensor) -> int:
        n = restart(rows)
        log.append({"n": torch.tensor(n), **_state(q), "codebook": q.codebook.detach().clone()})
        return n

    q.restart_dead_codes = recorded
    return log


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_restart_after_resets_codes_unchosen_for_its_period_as_documented(
    ema_decay: float | None,
) -> None:
    """docs/algorithms.md#codebook-init-and-restart, restart_after = tau: missed_k grows by
    N / K for each step without a row and returns to 0 when chosen; before a step's search
    the codes with missed_k >= tau (the longest unchosen first, at most N) move onto
    distinct rows of the batch, with N_k = mean_j N_j and m_k = e_k N_k. Here K = 16 and
    N = 16 rows a step, so N / K = 1 and tau = 2.5 means ceil(2.5) = 3 steps unchosen.
    The far codes 8..15 are never chosen: they must stay put for 3 steps and be restarted
    at the start of the 4th. A hand tracker of the steps each code went unchosen predicts
    every step's restarted set."""
    k, d, tau = 16, 4, 2.5
    q = _make(codebook_size=k, dim=d, init="normal", ema_decay=ema_decay,
              restart_after=tau).train()
    with torch.no_grad():
        q.codebook[8:] += 1000.0
    far = set(range(8, 16))
    log = _recording_restarts(q)
    idle = torch.zeros(k, dtype=torch.int64)  # steps since last chosen, by hand
    gen = torch.Generator().manual_seed(4)
    for step in range(1, 9):
        z = torch.randn(1, d, 4, 4, generator=gen)  # N = 16 rows
        rows, n = _rows(z), 16
        before = q.codebook.detach().clone()
        count_before = q.ema_count.clone() if ema_decay is not None else None
        # missed_k = idle_k N / K >= tau; longest unchosen first, ties to the lower id
        expect = [i for i in sorted(range(k), key=lambda i: (-int(idle[i]), i))
                  if idle[i] * n / k >= tau][:n]
        ids = q(z).indices.reshape(-1)
        after = log[-1]
        changed = (after["codebook"] != before).any(1).nonzero().squeeze(1).tolist()
        assert sorted(changed) == sorted(expect), step
        assert int(after["n"]) == len(expect)
        if step <= 3:
            assert far.isdisjoint(expect)  # 1 and 2 steps unchosen: missed 1.0, 2.0 < 2.5
        if step == 4:
            assert far <= set(expect)  # 3 steps unchosen: missed 3.0 >= 2.5
        if expect:
            new = after["codebook"][expect]  # (M, D): each a different row of the batch
            match = (new[:, None, :] == rows[None, :, :]).all(-1)  # (M, N)
            assert bool(match.any(1).all())
            assert len({int(j) for j in match.float().argmax(1)}) == len(expect)
            assert set(expect) <= set(ids.tolist())  # chosen by the rows they copy
            assert torch.equal(after["missed"][expect], torch.zeros(len(expect)))
            if ema_decay is not None:
                share = float(count_before.double().sum() / k)
                assert torch.allclose(after["ema_count"][expect].double(),
                                      torch.full((len(expect),), share, dtype=F64))
                assert torch.allclose(after["ema_sum"][expect].double(),
                                      new.double() * share, rtol=1e-6)
        used = torch.bincount(ids, minlength=k) > 0
        idle = torch.where(used, 0, idle + 1)
        assert torch.equal(q.missed.double(), idle.double() * n / k)
    assert sum(int(r["n"]) for r in log) >= 8


def test_restart_after_restarts_at_most_one_code_per_row_longest_unchosen_first() -> None:
    """64 codes far from the data, 16 rows a step, tau = 1 (N / K = 0.25: 4 steps): at
    step 5 all 64 are dead, but only 16 rows exist; 16 codes restart each step, the ties
    of equal missed_k going to the lower ids, and no two take the same row."""
    k, d = 72, 4
    q = _make(codebook_size=k, dim=d, init="normal", ema_decay=0.9, restart_after=1.0).train()
    with torch.no_grad():
        q.codebook[8:] += 1000.0
    log = _recording_restarts(q)
    gen = torch.Generator().manual_seed(5)
    restarted = []
    for _ in range(9):
        before = q.codebook.detach().clone()
        q(torch.randn(1, d, 4, 4, generator=gen))
        changed = (log[-1]["codebook"] != before).any(1).nonzero().squeeze(1).tolist()
        restarted.append([i for i in changed if i >= 8])
        new = log[-1]["codebook"][changed]
        assert torch.unique(new, dim=0).shape[0] == len(changed)  # distinct rows
        assert len(changed) <= 16
    # 16 rows / 72 codes a step: the far codes reach missed 1.0 after ceil(72 / 16) = 5 steps
    assert all(not r for r in restarted[:5])
    assert restarted[5] == list(range(8, 24))  # 16 of the 64 dead, lowest ids first
    assert restarted[6] == list(range(24, 40))  # then those unchosen longest: the next ids


def test_both_restart_rules_set_restart_the_union_of_their_dead_codes() -> None:
    q = VectorQuantizer(6, 2, ema_decay=0.9, restart_after=2.0, restart_threshold=0.1)
    with torch.no_grad():
        q.missed.copy_(torch.tensor([0.0, 2.0, 1.9, 0.0, 5.0, 0.0]))
        q.usage.copy_(torch.tensor([1.0, 1.0, 1.0, 0.05, 0.05, 0.1]))
    assert q.dead_codes().tolist() == [1, 3, 4]


def test_restart_after_buffer_is_saved_only_when_used() -> None:
    assert "missed" in VectorQuantizer(8, 4, ema_decay=0.9, restart_after=2.0).state_dict()
    assert "missed" not in VectorQuantizer(8, 4, ema_decay=0.9).state_dict()
    assert "missed" not in VectorQuantizer(8, 4, restart_threshold=0.1).state_dict()


# ---- data-dependent init -------------------------------------------------------------------------
def test_data_init_puts_codes_at_data_scale_and_uses_many_codes_at_step_one() -> None:
    """Encoder outputs ~0.05 N(0, 1), K = 1024, dim 16, 4096 rows.

    Measured: codes used at step one kmeans 1024, data 1024, normal 10; code RMS 0.047
    (kmeans), 0.050 (data), 1.00 (normal) against the data's 0.050."""
    torch.manual_seed(5)
    z = 0.05 * torch.randn(16, 16, 16, 16)
    data_rms = float(z.pow(2).mean().sqrt())
    used = {}
    for init in ("kmeans", "data", "normal"):
        kwargs = {} if init == "kmeans" else {"init": init}  # kmeans is the default
        q = _make(codebook_size=1024, dim=16, **kwargs).train()
        used[init] = q(z).indices.unique().numel()
        code_rms = float(q.codebook.detach().pow(2).mean().sqrt())
        if init != "normal":
            assert data_rms / 2 < code_rms < 2 * data_rms, (init, code_rms, data_rms)
        else:
            assert code_rms > 10 * data_rms
    assert used["kmeans"] > 700 and used["data"] > 700, used
    assert used["normal"] < 60, used


def test_init_once_only_in_training_and_not_after_loading() -> None:
    q = _make(codebook_size=16, dim=4)
    start = q.codebook.detach().clone()
    gen = torch.Generator().manual_seed(6)
    z = 0.1 * torch.randn(2, 4, 8, generator=gen)
    q.eval()(z)
    assert not bool(q.initialized)
    assert torch.equal(q.codebook.detach(), start)  # eval mode never initialises
    q.train()(z)
    assert bool(q.initialized)
    init_codes = q.codebook.detach().clone()
    assert not torch.equal(init_codes, start)
    assert float(init_codes.abs().max()) < 1.0  # at the data's scale, not N(0, 1)
    q(10.0 * z + 3.0)  # a second training batch does not re-initialise
    assert torch.equal(q.codebook.detach(), init_codes)
    assert "initialized" in q.state_dict()

    fresh = _make(seed=1, codebook_size=16, dim=4)
    fresh.load_state_dict(q.state_dict())
    fresh.train()(10.0 * z + 3.0)
    assert torch.equal(fresh.codebook.detach(), init_codes)
    assert bool(fresh.initialized)


# ---- cosine codes ------------------------------------------------------------------------------
def test_cosine_mode_returns_unit_codes_chosen_by_angle() -> None:
    q = _make(codebook_size=24, dim=5, cosine=True, init="normal").train()
    with torch.no_grad():  # codes of very different norms: only their direction may count
        q.codebook.mul_(torch.logspace(-2, 2, 24)[:, None])
    gen = torch.Generator().manual_seed(7)
    z = 3.0 * torch.randn(2, 5, 3, 3, generator=gen)
    out = q(z)
    zq_rows = _rows(out.z_q.detach())
    assert torch.allclose(zq_rows.norm(dim=1), torch.ones(18), atol=1e-6)
    assert torch.allclose(
        q.indices_to_codes(out.indices).norm(dim=1), torch.ones(2, 3, 3), atol=1e-6
    )
    rows = F.normalize(_rows(z).double(), dim=1)
    unit_codes = F.normalize(q.codebook.detach().double(), dim=1)
    cos = rows @ unit_codes.t()  # (N, K)
    assert torch.equal(out.indices.reshape(-1), cos.argmax(1))
    mse = float((rows - unit_codes[cos.argmax(1)]).pow(2).mean())
    assert math.isclose(float(out.losses["commitment"].detach()), 0.25 * mse, rel_tol=1e-5)


# ---- state ------------------------------------------------------------------------------------------
def _trained(seed: int = 0) -> VectorQuantizer:
    q = _make(
        seed=seed, codebook_size=32, dim=4, ema_decay=0.9, restart_threshold=0.5, usage_decay=0.5
    ).train()
    gen = torch.Generator().manual_seed(8)
    for _ in range(4):
        q(torch.randn(2, 4, 4, 4, generator=gen) + torch.randn(1, 4, 1, 1, generator=gen))
    return q


def test_state_dict_round_trip_gives_identical_outputs() -> None:
    q = _trained()
    fresh = _make(
        seed=99, codebook_size=32, dim=4, ema_decay=0.9, restart_threshold=0.5, usage_decay=0.5
    )
    fresh.load_state_dict(q.state_dict())
    for name, t in q.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], t), name
    z = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(9))
    q.eval(), fresh.eval()
    a, b = q(z), fresh(z)
    assert torch.equal(a.z_q, b.z_q) and torch.equal(a.indices, b.indices)
    assert a.losses.keys() == b.losses.keys()
    assert all(torch.equal(a.losses[n], b.losses[n]) for n in a.losses)
    # and one more training step (restart included) from the same RNG state agrees too
    q.train(), fresh.train()
    torch.manual_seed(10)
    q(z)
    torch.manual_seed(10)
    fresh(z)
    for name, t in q.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], t), name


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_eval_mode_changes_no_buffer(ema_decay: float | None) -> None:
    q = _make(codebook_size=32, dim=4, ema_decay=ema_decay, restart_threshold=0.9, usage_decay=0.5)
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(11))
    before = _state(q)
    q.eval()
    for scale in (1.0, 5.0, 0.01):
        q(scale * z)
    after = _state(q)
    assert all(torch.equal(before[n], after[n]) for n in before)
    q.train()(z)  # a trained state, then eval again
    before = _state(q)
    q.eval()
    for scale in (1.0, 5.0, 0.01):
        q(scale * z + 2.0)
    after = _state(q)
    assert all(torch.equal(before[n], after[n]) for n in before)
    # whereas a training step does change the statistics
    q.train()(z + 2.0)
    assert not torch.equal(_state(q)["usage"], before["usage"])


# ---- rotation estimator ----------------------------------------------------------------------------
def test_rotation_estimator_same_forward_different_gradient() -> None:
    ste = _make(codebook_size=64, dim=6, init="normal", grad_estimator="ste").train()
    rot = _make(seed=1, codebook_size=64, dim=6, init="normal", grad_estimator="rotation").train()
    rot.load_state_dict(ste.state_dict())
    gen = torch.Generator().manual_seed(12)
    z0 = torch.randn(2, 6, 3, 3, generator=gen)
    g = torch.randn(2, 6, 3, 3, generator=gen)
    outs, grads = [], []
    for q in (ste, rot):
        z = z0.clone().requires_grad_()
        out = q(z)
        (out.z_q * g).sum().backward()
        outs.append(out)
        grads.append(z.grad)
    assert torch.equal(outs[0].indices, outs[1].indices)
    assert torch.equal(outs[0].z_q, outs[1].z_q)  # both are q bit for bit
    assert all(torch.equal(outs[0].losses[n], outs[1].losses[n]) for n in outs[0].losses)
    assert torch.equal(grads[0], g)
    assert (grads[1] - g).abs().max() > 0.1
    # rotation: grad = lambda R^T g with R = I - 2 r r^T + 2 q^ u^T (explicit, float64)
    e = _rows(z0).double()
    code = _rows(outs[0].z_q.detach()).double()
    lam = code.norm(dim=1) / e.norm(dim=1)
    u, q_hat = F.normalize(e, dim=1), F.normalize(code, dim=1)
    r = F.normalize(u + q_hat, dim=1)
    eye = torch.eye(6, dtype=F64)
    rmat = eye - 2 * r[:, :, None] * r[:, None, :] + 2 * q_hat[:, :, None] * u[:, None, :]
    expected = lam[:, None] * torch.einsum("nji,nj->ni", rmat, _rows(g).double())
    assert torch.allclose(_rows(grads[1]).double(), expected, atol=1e-5)


# ---- configuration errors --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"codebook_size": 0, "dim": 4},
        {"codebook_size": -3, "dim": 4},
        {"codebook_size": 2.5, "dim": 4},
        {"codebook_size": True, "dim": 4},
        {"codebook_size": 8, "dim": 0},
        {"codebook_size": 8, "dim": 4, "codebook_weight": -1.0},
        {"codebook_size": 8, "dim": 4, "codebook_weight": float("nan")},
        {"codebook_size": 8, "dim": 4, "commitment_weight": -0.1},
        {"codebook_size": 8, "dim": 4, "ema_decay": 0.0},
        {"codebook_size": 8, "dim": 4, "ema_decay": 1.0},
        {"codebook_size": 8, "dim": 4, "ema_decay": 1.5},
        {"codebook_size": 8, "dim": 4, "ema_decay": 0.9, "ema_eps": 0.0},
        {"codebook_size": 8, "dim": 4, "init": "uniform"},
        {"codebook_size": 8, "dim": 4, "kmeans_iters": -1},
        {"codebook_size": 8, "dim": 4, "kmeans_iters": 2.0},
        {"codebook_size": 8, "dim": 4, "restart_threshold": 0.0},
        {"codebook_size": 8, "dim": 4, "restart_after": 0.0},
        {"codebook_size": 8, "dim": 4, "restart_after": float("inf")},
        {"codebook_size": 8, "dim": 4, "usage_decay": 1.0},
        {"codebook_size": 8, "dim": 4, "usage_decay": -0.1},
        {"codebook_size": 8, "dim": 4, "grad_estimator": "gumbel"},
        {"codebook_size": 8, "dim": 4, "chunk_rows": 0},
    ],
)
def test_invalid_configuration_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        VectorQuantizer(**kwargs)


# ---- two gloo ranks --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_batches(rank: int, steps: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    # ranks see different data: different scales and offsets
    return [
        (1.0 + rank) * torch.randn(2, 4, 4, 4, generator=gen) + 2.0 * rank for _ in range(steps)
    ]


# the two restart rules; restart_after with 128 codes and 32 rows a rank: N / K = 0.5, so
# codes unchosen for 4 steps restart, more of them than rows (the cap is exercised)
_DDP_RULES = {
    "threshold": lambda: VectorQuantizer(32, 4, ema_decay=0.9, restart_threshold=0.5,
                                         usage_decay=0.5),
    "after": lambda: VectorQuantizer(128, 4, ema_decay=0.9, restart_after=2.0),
}


def _ddp_worker(rank: int, world: int, port: int, result_dir: str, rule: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # rank-dependent RNG: only rank 0's choices may count
        q = _DDP_RULES[rule]().train()
        restarts = []
        restart = q.restart_dead_codes
        q.restart_dead_codes = lambda rows: restarts.append(restart(rows)) or restarts[-1]
        codebooks = []
        for z in _ddp_batches(rank, 10):
            q(z)
            codebooks.append(q.codebook.clone())
        # EMA without restart from the same N(0, 1) start: must equal one process that
        # sees both ranks' batches together
        torch.manual_seed(7)
        plain = VectorQuantizer(32, 4, ema_decay=0.9, init="normal").train()
        for z in _ddp_batches(rank, 3):
            plain(z)
        torch.save(
            {
                "codebooks": torch.stack(codebooks),
                "restarts": torch.tensor(restarts),
                "plain": plain.codebook.clone(),
            },
            os.path.join(result_dir, f"{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("rule", list(_DDP_RULES))
def test_two_gloo_ranks_hold_identical_codebooks(tmp_path, rule: str) -> None:
    world = 2
    mp.spawn(_ddp_worker, args=(world, _free_port(), str(tmp_path), rule), nprocs=world)
    res = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(world)]
    # k-means init on rank 0, all-reduced EMA statistics, restarts broadcast from rank 0
    assert torch.equal(res[0]["codebooks"], res[1]["codebooks"])
    assert torch.equal(res[0]["restarts"], res[1]["restarts"])
    assert int(res[0]["restarts"].sum()) > 0  # restarts did happen
    if rule == "after":  # more dead codes than rank 0's 32 rows at once: the cap held
        assert int(res[0]["restarts"].max()) == 32
    assert torch.equal(res[0]["plain"], res[1]["plain"])
    torch.manual_seed(7)
    ref = VectorQuantizer(32, 4, ema_decay=0.9, init="normal").train()
    for z0, z1 in zip(_ddp_batches(0, 3), _ddp_batches(1, 3)):
        ref(torch.cat([z0, z1]))
    assert torch.allclose(res[0]["plain"], ref.codebook, atol=1e-5)
