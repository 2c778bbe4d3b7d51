"""Training-step timings: two processes x half batch vs one x full batch, and compiled vs eager.

* ``ddp``: the fmnist_vq_ema autoencoder (VQ with EMA and dead-code restart, which
  all-reduce their statistics) trained with AdamW on random 32x32 grey images; one process
  with batch B, and two gloo processes (torch DistributedDataParallel, as Lightning's
  ``ddp`` strategy wraps the module) with B/2 each. Median seconds per optimizer step after
  a warm-up, both measured in the same run.
* ``compile``: the same model's training step (forward, L1 loss, backward, AdamW) eager and
  under ``torch.compile`` (inductor), one of each in turn, median seconds per step after
  the compilation, whose own time is reported apart.

Writes a markdown table to stdout; benchmarks/RESULTS_training.md keeps the recorded run.
* ``bf16``: the same model trained on the same Fashion-MNIST batches in float32 and under
  bf16 autocast, seed by seed; the codebook usage each ends with on held-out test images.
  ``--control`` trains float32 against float32 whose initial weights are scaled by
  ``1 + 2**-20`` (a change 4,096 times smaller than bf16's relative rounding, 2**-8): how far two runs
  drift apart from any tiny difference, the yardstick for bf16's difference.

Run: ``.venv/bin/python benchmarks/training.py ddp`` (or ``compile``, ``bf16``).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vqtok.models import Decoder, Encoder, VQAutoencoder
from vqtok.quantizers import FSQ, VectorQuantizer

ARCH = {"channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "dim": 16}


def model(quantizer: str) -> VQAutoencoder:
    torch.manual_seed(0)
    q = {"vq_ema": lambda: VectorQuantizer(1000, 16, ema_decay=0.99, restart_threshold=0.001),
         "vq_ste": lambda: VectorQuantizer(1000, 16),
         "fsq": lambda: FSQ([8, 5, 5, 5], dim=16)}[quantizer]()
    return VQAutoencoder(Encoder(in_channels=1, **ARCH), q, Decoder(out_channels=1, **ARCH))


def timed_steps(net: torch.nn.Module, batch: int, steps: int, warmup: int, seed: int,
                opt: torch.optim.Optimizer | None = None) -> list[float]:
    """Seconds of each optimizer step after ``warmup`` steps."""
    opt = opt or torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    times = []
    for step in range(warmup + steps):
        x = torch.rand(batch, 1, 32, 32, generator=g) * 2 - 1
        start = time.perf_counter()
        out = net(x)
        loss = F.l1_loss(out.x_hat, x) + sum(out.quant.losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _ddp_worker(rank: int, world: int, port: int, batch: int, steps: int, warmup: int,
                out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net = torch.nn.parallel.DistributedDataParallel(model("vq_ema").train())
        times = torch.tensor(timed_steps(net, batch // world, steps, warmup, seed=rank))
        dist.all_reduce(times, op=dist.ReduceOp.MAX)  # a step ends when its slowest rank does
        if rank == 0:
            torch.save(times, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_ddp(batch: int, steps: int, warmup: int) -> list[str]:
    torch.set_num_threads(1)
    one = timed_steps(model("vq_ema").train(), batch, steps, warmup, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "times.pt")
        mp.spawn(_ddp_worker, args=(2, _free_port(), batch, steps, warmup, path), nprocs=2)
        two = torch.load(path).tolist()
    t1, t2 = statistics.median(one), statistics.median(two)
    return ["| processes x batch | median s/step | images/s | vs 1 process |",
            "|---|---:|---:|---:|",
            f"| 1 x {batch} | {t1:.4f} | {batch / t1:.0f} | 1.00 |",
            f"| 2 x {batch // 2} (gloo DDP) | {t2:.4f} | {batch / t2:.0f} | {t2 / t1:.2f} |"]


def bench_compile(batch: int, steps: int, warmup: int, quantizers: list[str]) -> list[str]:
    """Eager and compiled steps alternate, one of each per round, so that both see the
    same machine load (a shared machine's load changes within a minute)."""
    torch.set_num_threads(1)
    rows = ["| quantizer | eager s/step | compiled s/step | speed-up | compile time (s) |",
            "|---|---:|---:|---:|---:|"]
    for name in quantizers:
        eager = model(name).train()
        torch._dynamo.reset()
        compiled = torch.compile(model(name).train())
        start = time.perf_counter()
        timed_steps(compiled, batch, 0, 3, 0)  # compiles forward and backward
        compile_s = time.perf_counter() - start
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        opts = {"eager": torch.optim.AdamW(eager.parameters(), lr=1e-3),
                "compiled": torch.optim.AdamW(compiled.parameters(), lr=1e-3)}
        timed_steps(eager, batch, 0, warmup, 0, opts["eager"])
        for round_ in range(steps):
            for kind, net in (("eager", eager), ("compiled", compiled)):
                times[kind] += timed_steps(net, batch, 1, 0, round_, opts[kind])
        t_eager, t_compiled = (statistics.median(times[k]) for k in ("eager", "compiled"))
        rows.append(f"| {name} | {t_eager:.4f} | {t_compiled:.4f} | "
                    f"{t_eager / t_compiled:.2f}x | {compile_s:.0f} |")
    return rows


def bench_bf16(batch: int, steps: int, quantizers: list[str], seeds: int,
               val_images: int, first_seed: int = 0, control: bool = False) -> list[str]:
    """Train the same model on the same Fashion-MNIST batches in float32 and under bf16
    autocast, then count the codes of ``val_images`` test images (each run in its own
    precision): the usage each precision ends with, seed by seed. ``control``: the second
    run is float32 too, from weights scaled by ``1 + 2**-20``."""
    from vqtok.data import FashionMNIST
    from vqtok.metrics import CodebookUsage

    torch.set_num_threads(1)
    train, test = FashionMNIST(None, "train"), FashionMNIST(None, "test")
    other = "float32, weights x (1 + 2^-20)" if control else "bf16"
    rows = [f"| quantizer | seed | float32 usage | {other} usage | difference (points) |",
            "|---|---:|---:|---:|---:|"]
    for name in quantizers:
        for seed in range(first_seed, first_seed + seeds):
            usage = {}
            for precision in ("float32", "bf16"):
                net = model(name).train()
                if control and precision == "bf16":
                    with torch.no_grad():
                        for p in net.parameters():
                            p.mul_(1 + 2 ** -20)
                torch.manual_seed(seed)  # model() seeds 0; the seed moves the data order
                opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
                order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
                for step in range(steps):
                    idx = order[(step * batch) % len(train):][:batch]
                    x = torch.stack([train[int(i)][0] for i in idx])
                    with torch.autocast("cpu", torch.bfloat16,
                                        enabled=precision == "bf16" and not control):
                        out = net(x)
                        loss = F.l1_loss(out.x_hat.float(), x) + sum(out.quant.losses.values())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                net.eval()
                counter = CodebookUsage(net.quantizer.codebook_size)
                with torch.no_grad(), torch.autocast(
                        "cpu", torch.bfloat16, enabled=precision == "bf16" and not control):
                    for start in range(0, val_images, 256):
                        x = torch.stack([test[i][0] for i in
                                         range(start, min(start + 256, val_images))])
                        counter.update(net(x).quant.indices)
                usage[precision] = float(counter.compute()["usage"])
            rows.append(f"| {name} | {seed} | {usage['float32']:.3f} | {usage['bf16']:.3f} | "
                        f"{100 * (usage['bf16'] - usage['float32']):+.1f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["ddp", "compile", "bf16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quantizers", nargs="+", default=["fsq", "vq_ste"],
                        choices=["fsq", "vq_ste", "vq_ema"])
    parser.add_argument("--seeds", type=int, default=3, help="bf16: seeds per quantizer")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="bf16: the first seed (several processes can share the seeds)")
    parser.add_argument("--control", action="store_true",
                        help="bf16: float32 against float32 from weights scaled by 1 + 2^-20")
    parser.add_argument("--val-images", type=int, default=2000,
                        help="bf16: test images whose codes are counted")
    args = parser.parse_args()
    load_before = os.getloadavg()
    if args.what == "ddp":
        rows = bench_ddp(args.batch, args.steps, args.warmup)
    elif args.what == "compile":
        rows = bench_compile(args.batch, args.steps, args.warmup, args.quantizers)
    else:
        rows = bench_bf16(args.batch, args.steps, args.quantizers, args.seeds, args.val_images,
                          args.first_seed, args.control)
    load_after = os.getloadavg()
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, "
          f"1 thread per process; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
