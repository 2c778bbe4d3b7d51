"""Helpers shared by test modules: the data sets the suite may read, and tiny models."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from vqtok.data import data_home, dataset_dir
from vqtok.data.fashion_mnist import FILES, find_file
from vqtok.models import Decoder, Encoder, VQAutoencoder
from vqtok.quantizers import FSQ

ROOT = Path(__file__).resolve().parents[1]
"""The checkout the suite runs from."""

FASHION_MNIST = dataset_dir("fashion-mnist")
"""Where the suite looks for Fashion-MNIST (``$VQTOK_DATA/fashion-mnist``)."""


PEAK_RSS_SOURCE = """
def peak_rss_bytes():
    # VmHWM: the peak resident set of this process's own address space since exec. Not
    # ru_maxrss: Linux carries the parent's peak over fork and exec into the child's, so a
    # child of a large pytest process would report pytest's peak.
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    return int(kib) * 1024
"""
"""Source of ``peak_rss_bytes()`` for a child process's script (Linux), to prepend to it."""


def has_fashion_mnist() -> bool:
    return all(find_file(FASHION_MNIST, name) for pair in FILES.values() for name in pair)


needs_fashion_mnist = pytest.mark.skipif(
    not has_fashion_mnist(),
    reason=f"needs Fashion-MNIST in {FASHION_MNIST}: run `vqtok data fashion-mnist` (or "
           f"`vqtok data fashion-mnist --from DIR`), or point VQTOK_DATA at a folder holding "
           f"fashion-mnist/ (the data cache is {data_home()})")

TINY = {"channels": 8, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "dim": 4,
        "num_groups": 4}
"""A 4x-downsampling conv encoder/decoder small enough for unit tests."""


def tiny_model(quantizer: torch.nn.Module | None = None, seed: int = 0, in_channels: int = 3,
               norm: str = "group") -> VQAutoencoder:
    """A seeded tiny autoencoder (FSQ with 1,000 codes unless another quantizer is given)."""
    torch.manual_seed(seed)
    quantizer = FSQ(levels=[8, 5, 5, 5]) if quantizer is None else quantizer
    return VQAutoencoder(Encoder(in_channels=in_channels, norm=norm, **TINY), quantizer,
                         Decoder(out_channels=in_channels, norm=norm, **TINY))


def undecided_ids(quantizer: torch.nn.Module, z: torch.Tensor, rel: float = 1e-4,
                  tries: int = 8, seed: int = 0) -> torch.Tensor:
    """Where the ids of ``quantizer(z)`` (in eval mode, on a copy) lie too close to a
    decision boundary for two kernels to be sure to agree: a bool map of the ids' shape,
    True where moving ``z`` by ``rel`` of its largest value (uniformly up and down, then in
    ``tries`` random directions) changes the id.

    Two kernels that sum the same float32 products in another order (onnxruntime against
    PyTorch, inductor's generated code against eager, another BLAS kernel) differ in the
    last bits, about 1e-7 of the values' scale; an id can differ only where a value lies
    that close to a rounding boundary (FSQ, LFQ) or to a tie between two codes (VQ). A
    perturbation 1,000 times larger finds those places, so ids may be compared exactly
    everywhere else."""
    q = copy.deepcopy(quantizer).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ids = q(z).indices
        step = rel * float(z.abs().amax())
        moves = [torch.full_like(z, step), torch.full_like(z, -step)]
        moves += [step * torch.randn(z.shape, generator=gen).to(z) for _ in range(tries)]
        moved = torch.zeros_like(ids, dtype=torch.bool)
        for move in moves:
            moved |= q(z + move).indices != ids
    return moved


def assert_ids_agree(got: torch.Tensor, want: torch.Tensor, undecided: torch.Tensor,
                     least_decided: float = 0.9) -> None:
    """``got == want`` at every id that :func:`undecided_ids` does not flag, and at least
    ``least_decided`` of the ids are decided (so the comparison covers most of them)."""
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    assert got.shape == want.shape == undecided.shape, (got.shape, want.shape, undecided.shape)
    decided = ~undecided
    assert decided.float().mean() >= least_decided, f"only {decided.float().mean():.1%} decided"
    differ = (got != want) & decided
    assert not bool(differ.any()), f"{int(differ.sum())} decided ids differ"


class SigtermAtStep(pl.Callback):
    """Sends this process SIGTERM after optimizer step ``step``, as a scheduler would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class DumpState(pl.Callback):
    """At the end of training, saves this rank's module state, optimizer and scheduler
    states and global step to ``dirpath/rank{global_rank}.pt``: what each process of a run
    ends with, for tests that compare ranks or an interrupted run with an uninterrupted one."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {
            "module": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            "optimizers": [o.state_dict() for o in trainer.optimizers],
            "schedulers": [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs],
            "lrs": [[g["lr"] for g in o.param_groups] for o in trainer.optimizers],
            "global_step": trainer.global_step,
            "callbacks": {type(c).__name__: c.state_dict() for c in trainer.callbacks
                          if type(c).__name__ in ("CodebookHistory", "WeightEMA")},
        }
        os.makedirs(self.dirpath, exist_ok=True)
        torch.save(state, os.path.join(self.dirpath, f"rank{trainer.global_rank}.pt"))


def assert_same_state(a: object, b: object, where: str = "state") -> None:
    """Nested dicts/lists/tensors equal bit for bit (tensors by ``torch.equal`` and dtype)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max abs diff {(a.double() - b.double()).abs().max()}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def vqtok_cli(args: list[str], cwd: Path, timeout: float = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``vqtok ARGS`` as a user runs it: a new process (so Lightning's DDP launcher can start
    its other ranks as copies of it) that can import ``tests.helpers`` callbacks."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([str(Path(sys.executable).with_name("vqtok")), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, check=False,
                          timeout=timeout)


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device on this machine")),
]
"""Devices a test runs on: the CPU always, CUDA where a GPU is present."""
