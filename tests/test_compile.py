"""`torch.compile`: every quantizer and the autoencoder compile, and a compiled forward and
backward give what eager mode gives (outputs, ids, losses, input gradients, and the buffers
a training step updates). The default run traces with the ``aot_eager`` backend (Dynamo's
graph capture and AOTAutograd, seconds); the ``inductor`` backend (generated C++ or Triton
kernels, minutes on a small CPU) runs as `slow`. Where graphs break, and why:
docs/training.md#torch-compile.

Parametrised over the devices at hand: CUDA runs where a GPU is present."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import DEVICES, assert_ids_agree, tiny_model, undecided_ids
from vqtok.quantizers import BSQ, FSQ, IBQ, LFQ, ResidualQuantizer, SimVQ, VectorQuantizer
from vqtok.quantizers import functional as Fq

QUANTIZERS = {
    "vq_ste": lambda: VectorQuantizer(64, 4),
    "vq_rotation": lambda: VectorQuantizer(64, 4, grad_estimator="rotation"),
    "vq_ema": lambda: VectorQuantizer(64, 4, ema_decay=0.9, restart_threshold=0.2,
                                      usage_decay=0.5),
    "simvq": lambda: SimVQ(64, 4),
    "ibq": lambda: IBQ(64, 4),
    "fsq": lambda: FSQ([8, 5, 5, 5], dim=4),
    "lfq": lambda: LFQ(6, dim=4),
    "bsq": lambda: BSQ(6, dim=4),
    "residual": lambda: ResidualQuantizer([VectorQuantizer(16, 4), VectorQuantizer(16, 4)]),
}


def _steps(module: torch.nn.Module, device: str, train: bool, seed: int = 0
           ) -> list[dict[str, torch.Tensor]]:
    """Three forward/backward passes on fixed inputs: outputs, input grads, and state."""
    module.train(train)
    g = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(3):
        z = torch.randn(2, 4, 8, 8, generator=g).to(device).requires_grad_(True)
        torch.manual_seed(1)  # the same random draws (k-means, restarts) in both modes
        out = module(z)
        loss = out.z_q.square().mean() + sum(out.losses.values())
        if loss.requires_grad:
            loss.backward()
        records.append({"z_q": out.z_q.detach(), "indices": out.indices,
                        "loss": loss.detach(), "grad": z.grad,
                        **{f"state.{k.removeprefix('_orig_mod.')}": v.detach().clone()
                           for k, v in module.state_dict().items()}})
    return records


def _assert_close(eager: list[dict], compiled: list[dict]) -> None:
    for step, (a, b) in enumerate(zip(eager, compiled)):
        assert a.keys() == b.keys()
        for key in a:
            if a[key] is None:
                assert b[key] is None
            elif key == "indices" or not a[key].is_floating_point():
                assert torch.equal(a[key], b[key]), f"step {step} {key}"
            else:
                torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6,
                                           msg=f"step {step} {key}")


# The default run checks a training step of VQ with EMA and restarts (buffers, random
# draws) and of FSQ; the other quantizers, and eval mode, run as slow.
DEFAULT = {("vq_ema", True), ("fsq", True)}
CASES = [pytest.param(name, train, marks=() if (name, train) in DEFAULT else pytest.mark.slow,
                      id=f"{name}-{'train' if train else 'eval'}")
         for name in QUANTIZERS for train in (True, False)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("name", "train"), CASES)
def test_compiled_quantizer_matches_eager(name: str, train: bool, device: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = QUANTIZERS[name]().to(device)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, backend="aot_eager")
    _assert_close(_steps(eager, device, train), _steps(compiled, device, train))


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_autoencoder_matches_eager(device: str) -> None:
    torch._dynamo.reset()
    eager = tiny_model(VectorQuantizer(64, 4, ema_decay=0.9)).to(device).train()
    compiled = torch.compile(copy.deepcopy(eager), backend="aot_eager")
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    for model in (eager, compiled):
        torch.manual_seed(1)
        out = model(x)
        (out.x_hat - x).abs().mean().backward()
    a, b = eager(x), compiled(x)
    torch.testing.assert_close(b.x_hat, a.x_hat, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.quant.indices, b.quant.indices)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", [n if n in ("vq_ema", "fsq") else
                                  pytest.param(n, marks=pytest.mark.slow) for n in QUANTIZERS])
def test_quantizers_compile_to_one_graph(name: str) -> None:
    # Inference is one graph for every quantizer: no break anywhere (fullgraph=True raises
    # at the first one). FSQ, LFQ and BSQ train as one graph too.
    z = torch.randn(2, 4, 8, 8)
    torch._dynamo.reset()
    out = torch.compile(QUANTIZERS[name]().eval(), backend="aot_eager", fullgraph=True)(z)
    assert out.z_q.shape == z.shape
    if name in ("fsq", "lfq", "bsq"):
        torch._dynamo.reset()
        out = torch.compile(QUANTIZERS[name]().train(), backend="aot_eager", fullgraph=True)(z)
        assert out.z_q.shape == z.shape


@pytest.mark.slow  # inductor generates and compiles C++: about a minute per model here
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["fsq", "vq_ema"])
def test_inductor_autoencoder_matches_eager(name: str, device: str) -> None:
    torch._dynamo.reset()
    eager = tiny_model(QUANTIZERS[name]()).to(device).eval()
    compiled = torch.compile(copy.deepcopy(eager))
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    with torch.no_grad():
        a, b = eager(x), compiled(x)
        # inductor's generated kernels sum in another order: ids agree wherever no value
        # lies within float rounding of a boundary (tests.helpers.undecided_ids)
        undecided = undecided_ids(eager.quantizer, eager.encoder(x))
    assert_ids_agree(b.quant.indices, a.quant.indices, undecided)
    torch.testing.assert_close(b.x_hat, a.x_hat, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # inductor generates and compiles C++ for forward and backward: minutes
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("estimator", ["ste", "rotation"])
def test_inductor_trains_vq_ema_like_eager(estimator: str, device: str) -> None:
    # The EMA update writes a new codebook after the codes were looked up; a compiled
    # backward that recomputes those codes must still see the codebook they came from.
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = tiny_model(VectorQuantizer(64, 4, ema_decay=0.9, grad_estimator=estimator))
    eager = eager.to(device).train()
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        x = (torch.rand(8, 3, 32, 32, generator=g) * 2 - 1).to(device)
        outs, searched = [], []
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(step)
            with pytest.MonkeyPatch.context() as patch:
                if model is eager:  # the rows and codebook of eager's last search
                    patch.setattr(Fq, "nearest_code", _recording(Fq.nearest_code, searched))
                out = model(x)
            ((out.x_hat - x).abs().mean() + sum(out.quant.losses.values())).backward()
            outs.append(out)
        assert_ids_agree(outs[1].quant.indices, outs[0].quant.indices,
                         _undecided_search(*searched[-1]).view(outs[0].quant.indices.shape))
        for (name, p), q in zip(eager.named_parameters(), compiled_module.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5,
                                       msg=f"step {step} {name}")
        torch.testing.assert_close(compiled_module.quantizer.codebook,
                                   eager.quantizer.codebook, rtol=1e-5, atol=1e-6)


def _recording(search, calls: list):
    """``search`` that also appends the ``(rows, codebook)`` it is given to ``calls``."""
    def record(rows, codebook, *args, **kwargs):
        calls.append((rows.detach().clone(), codebook.detach().clone()))
        return search(rows, codebook, *args, **kwargs)
    return record


def _undecided_search(rows: torch.Tensor, codebook: torch.Tensor, rel: float = 1e-4,
                      tries: int = 8) -> torch.Tensor:
    """Rows whose nearest code changes when the row moves by ``rel`` of the rows' largest
    value in a random direction: near-ties that another kernel's rounding may flip."""
    gen = torch.Generator().manual_seed(0)
    ids = Fq.nearest_code(rows, codebook)
    step = rel * float(rows.abs().amax())
    moved = torch.zeros_like(ids, dtype=torch.bool)
    for _ in range(tries):
        move = step * torch.randn(rows.shape, generator=gen).to(rows)
        moved |= Fq.nearest_code(rows + move, codebook) != ids
    return moved
