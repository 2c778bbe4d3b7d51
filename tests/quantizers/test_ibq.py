"""IBQ (Shi et al. 2024; docs/algorithms.md#ibq): ids are the largest logit, the gradient
is that of the softmax straight-through over every code, the losses are the released
code's, checked against a dense float64 re-implementation written here from the
equations; and the softmax over K = 262,144 codes runs in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import PEAK_RSS_SOURCE
from vqtok.quantizers import IBQ
from vqtok.quantizers import functional as Fq

GIB = 2**30


def clear_rows(logits: torch.Tensor, margin: float = 1e-3) -> torch.Tensor:
    """Rows whose best logit beats the second best by more than ``margin``: only there is
    the argmax the same on every kernel."""
    top = logits.topk(2, dim=1).values
    return (top[:, 0] - top[:, 1]) > margin


def dense_reference(z: torch.Tensor, codebook: torch.Tensor, *, w_index: float = 1.0,
                    w_commit: float = 1.0, w_codebook: float = 0.25, w_entropy: float = 0.05,
                    gamma: float = 1.0, tau: float = 0.01, eps: float = 1e-5) -> dict:
    """The released IBQ's forward in float64 with the whole N x K one-hot: (I1)-(I5)."""
    logits = z @ codebook.t()  # (N, K)
    soft = logits.softmax(dim=1)
    ids = logits.argmax(dim=1)
    hard = F.one_hot(ids, codebook.shape[0]).to(z.dtype)
    one_hot = hard - soft.detach() + soft
    z_q = one_hot @ codebook
    z_q_hard = hard @ codebook
    losses = {
        "index": w_index * ((z_q - z) ** 2).mean(),
        "commitment": w_commit * ((z_q_hard.detach() - z) ** 2).mean(),
        "codebook": w_codebook * ((z_q_hard - z.detach()) ** 2).mean(),
    }
    if w_entropy > 0:
        p = (logits / tau).softmax(dim=1)
        sample = -(p * (logits / tau).log_softmax(dim=1)).sum(dim=1).mean()
        mean_p = p.mean(dim=0)
        batch = -(mean_p * (mean_p + eps).log()).sum()
        losses["sample_entropy"] = w_entropy * sample
        losses["codebook_entropy"] = -w_entropy * gamma * batch
    return {"ids": ids, "z_q": z_q, "losses": losses, "logits": logits}


def ibq_and_reference(seed: int, n: int = 60, k: int = 24, d: int = 8, **kwargs):
    """An IBQ (float32) and the float64 reference on the same codebook and inputs, both run
    forward and backward through the same random upstream gradient of z_q plus the sum of
    the losses. Returns (vqtok's grads, the reference's grads, forward outputs)."""
    torch.manual_seed(seed)
    quantizer = IBQ(k, d, **kwargs).train()
    z = torch.randn(n, d) * 0.7
    upstream = torch.randn(n, d)
    z32 = z.clone().requires_grad_(True)
    z_q, ids, losses = quantizer.quantize_rows(z32)
    ((z_q * upstream).sum() + sum(losses.values())).backward()

    ref_weights = {"w_index": kwargs.get("index_weight", 1.0),
                   "w_entropy": kwargs.get("entropy_weight", 0.05),
                   "tau": kwargs.get("temperature", 0.01)}
    z64 = z.double().requires_grad_(True)
    c64 = quantizer.codebook.detach().double().requires_grad_(True)
    ref = dense_reference(z64, c64, **ref_weights)
    ((ref["z_q"] * upstream.double()).sum() + sum(ref["losses"].values())).backward()
    return quantizer, z32, z64, c64, (z_q, ids, losses), ref


@pytest.mark.parametrize("softmax_rows", [None, 7])
def test_ids_are_the_argmax_of_the_logits(softmax_rows) -> None:
    quantizer, _, _, _, (z_q, ids, _), ref = ibq_and_reference(0, softmax_rows=softmax_rows)
    clear = clear_rows(ref["logits"].detach())
    assert clear.float().mean() > 0.9  # the check covers most rows
    assert torch.equal(ids[clear], ref["ids"][clear])
    # z_q is the chosen code bit for bit, and indices_to_codes reproduces it
    assert torch.equal(z_q.detach(), quantizer.codebook.detach()[ids])


def test_ids_are_the_nearest_codes_when_the_codes_have_one_norm() -> None:
    """argmax z.e_k = argmin ||z - e_k||^2 once every ||e_k|| is the same."""
    torch.manual_seed(1)
    quantizer = IBQ(40, 6)
    with torch.no_grad():
        quantizer.codebook.copy_(F.normalize(quantizer.codebook, dim=1) * 1.7)
    z = torch.randn(2, 6, 5, 7)
    ids = quantizer.eval()(z).indices.flatten()
    rows = z.movedim(1, -1).reshape(-1, 6).double()
    dist = torch.cdist(rows, quantizer.codebook.detach().double())  # brute force
    order = dist.topk(2, dim=1, largest=False).values
    clear = (order[:, 1] - order[:, 0]) > 1e-4
    assert clear.float().mean() > 0.9
    assert torch.equal(ids[clear], dist.argmin(dim=1)[clear])


def test_ids_differ_from_the_nearest_code_when_norms_differ() -> None:
    """A long code wins the logit though a short one is nearer: IBQ is not VQ's search."""
    quantizer = IBQ(2, 2)
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[1.0, 0.0], [10.0, 1.0]]))
    z = torch.tensor([[1.0, 0.0]]).reshape(1, 2, 1)
    assert int(quantizer.eval()(z).indices) == 1  # logits 1 and 10; distances 0 and ~9.06


@pytest.mark.parametrize(("softmax_rows", "kwargs"), [
    (None, {}),
    (7, {}),
    (13, {"entropy_weight": 0.0}),
    (5, {"temperature": 0.5, "index_weight": 2.0, "entropy_weight": 0.3}),
])
def test_losses_and_gradients_match_a_float64_dense_reference(softmax_rows, kwargs) -> None:
    quantizer, z32, z64, c64, (_, _, losses), ref = ibq_and_reference(
        2, softmax_rows=softmax_rows, **kwargs)
    assert set(losses) == set(ref["losses"])
    for name, value in losses.items():
        torch.testing.assert_close(value.double(), ref["losses"][name].detach(),
                                   rtol=1e-5, atol=1e-6, msg=name)
    scale_z = z64.grad.abs().max()
    torch.testing.assert_close(z32.grad.double(), z64.grad, rtol=0, atol=1e-5 * scale_z)
    scale_c = c64.grad.abs().max()
    torch.testing.assert_close(quantizer.codebook.grad.double(), c64.grad, rtol=0,
                               atol=1e-5 * scale_c)


def test_the_gradient_reaches_every_code_even_unchosen_ones() -> None:
    """Without the entropy terms the only path to an unchosen code is the softmax
    straight-through; plain VQ would give those codes exactly 0."""
    quantizer, _, _, c64, (_, ids, _), _ = ibq_and_reference(3, n=20, k=64,
                                                             entropy_weight=0.0)
    unchosen = torch.ones(64, dtype=torch.bool)
    unchosen[ids] = False
    assert unchosen.sum() >= 30  # 20 rows cannot choose all 64 codes
    grad = quantizer.codebook.grad
    assert (grad.norm(dim=1) > 0).all()
    torch.testing.assert_close(grad[unchosen].double(), c64.grad[unchosen], rtol=0,
                               atol=1e-5 * c64.grad.abs().max())


def test_blocks_do_not_change_the_values() -> None:
    """ibq_softmax in blocks of rows gives the unblocked values (up to rounding)."""
    torch.manual_seed(4)
    rows, codebook = torch.randn(50, 8), torch.randn(30, 8)
    whole = Fq.ibq_softmax(rows, codebook, 100.0)
    for block in (1, 7, 49):
        parts = Fq.ibq_softmax(rows, codebook, 100.0, block_rows=block)
        for a, b in zip(whole, parts):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_eval_without_gradient_gives_the_training_ids_and_codes() -> None:
    torch.manual_seed(5)
    quantizer = IBQ(64, 8)
    z = torch.randn(2, 8, 6, 7)
    train = quantizer.train()(z)
    with torch.no_grad():
        evaluated = quantizer.eval()(z)
    assert torch.equal(train.indices, evaluated.indices)
    assert torch.equal(train.z_q.detach(), evaluated.z_q)
    assert "sample_entropy" not in evaluated.losses  # entropy terms: training only
    torch.testing.assert_close(evaluated.losses["index"], train.losses["index"].detach())


def test_inner_product_search_matches_brute_force_argmax() -> None:
    torch.manual_seed(6)
    x, codebook = torch.randn(300, 5), torch.randn(3000, 5) * torch.rand(3000, 1) * 3
    ids = Fq.nearest_code(x, codebook, chunk_rows=64, chunk_codes=256, inner_product=True)
    logits = x.double() @ codebook.double().t()
    clear = clear_rows(logits, 1e-4)
    assert clear.float().mean() > 0.9
    assert torch.equal(ids[clear], logits.argmax(dim=1)[clear])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"index_weight": 0.0}, "index_weight"),
    ({"entropy_weight": -1.0}, "entropy_weight"),
    ({"temperature": 0.0}, "temperature"),
    ({"entropy_eps": float("nan")}, "entropy_eps"),
    ({"softmax_rows": 0}, "softmax_rows"),
    ({"codebook_weight": -0.5}, "codebook_weight"),
])
def test_bad_arguments_raise_one_clear_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        IBQ(16, 4, **kwargs)


def test_a_codebook_too_large_for_its_cap_is_refused_before_allocation() -> None:
    with pytest.raises(ValueError, match="2\\^28"):
        IBQ(2**20, 2**9)


# ---- bounded memory ---------------------------------------------------------------------------
MEMORY_SCRIPT = PEAK_RSS_SOURCE + textwrap.dedent(
    """
    import json
    import torch
    torch.set_num_threads(2)
    from vqtok.quantizers import IBQ
    torch.manual_seed(0)
    quantizer = IBQ(262144, 8).train()
    z = torch.randn(16, 8, 32, 32, requires_grad=True)  # N = 16,384 rows
    out = quantizer(z)
    (out.z_q.sum() + sum(out.losses.values())).backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(quantizer.codebook.grad).all()
    print(json.dumps({"peak_rss": peak_rss_bytes(), "losses": sorted(out.losses)}))
    """
)


@pytest.mark.slow
def test_k262144_forward_backward_peak_memory_under_1_5_gib() -> None:
    """Forward + backward with every loss at K = 262,144, N = 16,384, dim 8 in a fresh
    process: its own peak RSS (imports included). The N x K logits alone are 16 GiB."""
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True,
                          text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "codebook_entropy" in result["losses"]
    assert result["peak_rss"] < 1.5 * GIB, f"peak RSS {result['peak_rss'] / GIB:.2f} GiB"
