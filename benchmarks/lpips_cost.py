"""What LPIPS costs as a training loss, and how closely it follows its formula.

* ``cost``: seconds per batch of LPIPS forward + backward (gradient to the first image, as
  in a reconstruction loss) on B x 3 x S x S images, next to one training step of the
  photos autoencoder (`vqtok/configs/photos_fsq.yaml`'s architecture: forward, L1 +
  quantizer losses, backward, AdamW) on the same batch, and that step with an LPIPS term
  added on its reconstruction. The three are timed in turn, step after step, so the
  machine's load falls on each alike; medians after a warm-up. Random weights: the cost
  does not depend on their values.
* ``correctness``: the largest difference between the float32 network and a float64
  re-computation of the formula (tests/models/test_lpips.py's reference) over a few random
  batches and weight draws.

Writes markdown to stdout; benchmarks/RESULTS_recipe.md keeps the recorded run.
Run: ``.venv/bin/python benchmarks/lpips_cost.py cost`` (or ``correctness``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vqtok.models import Decoder, Encoder, VQAutoencoder
from vqtok.models.lpips import LPIPS
from vqtok.quantizers import FSQ

ARCH = {"channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "norm": "channel",
        "dim": 16}


def photos_autoencoder() -> VQAutoencoder:
    torch.manual_seed(0)
    return VQAutoencoder(Encoder(in_channels=3, **ARCH), FSQ([8, 5, 5, 5], dim=16),
                         Decoder(out_channels=3, **ARCH))


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def cost(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    lpips = LPIPS.random(seed=0)
    model = photos_autoencoder()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def lpips_alone(x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.clone().requires_grad_(True)
        lpips(x, y).mean().backward()

    def step(x: torch.Tensor, with_lpips: bool) -> None:
        out = model(x)
        loss = F.l1_loss(out.x_hat, x) + sum(out.quant.losses.values())
        if with_lpips:
            loss = loss + lpips(out.x_hat, x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    before = load()
    rows = []
    for size in args.sizes:
        times: dict[str, list[float]] = {"lpips": [], "ae": [], "ae+lpips": []}
        for i in range(args.warmup + args.steps):
            x = torch.rand(args.batch, 3, size, size, generator=g) * 2 - 1
            y = torch.rand(args.batch, 3, size, size, generator=g) * 2 - 1
            for name, run, run_args in (("lpips", lpips_alone, (x, y)),
                                        ("ae", step, (x, False)),
                                        ("ae+lpips", step, (x, True))):
                start = time.perf_counter()
                run(*run_args)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((size, med))
    after = load()
    params = sum(b.numel() for b in lpips.buffers())
    print(f"LPIPS (VGG16) forward + backward vs the photos autoencoder's training step, "
          f"batch {args.batch}, median of {args.steps} after {args.warmup} warm-up. "
          f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} thread(s); load average {before} before, {after} after. "
          f"LPIPS holds {params:,} frozen values ({params * 4 / 2**20:.1f} MiB in float32); "
          f"the autoencoder {sum(p.numel() for p in model.parameters()):,} parameters.\n")
    print("| images | LPIPS fwd+bwd (s) | AE step (s) | AE step + LPIPS term (s) "
          "| step with / without LPIPS |")
    print("|---|---:|---:|---:|---:|")
    for size, med in rows:
        print(f"| {args.batch} x 3 x {size} x {size} | {med['lpips']:.3f} | {med['ae']:.3f} | "
              f"{med['ae+lpips']:.3f} | {med['ae+lpips'] / med['ae']:.2f} |")


def correctness(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.models.test_lpips import reference_lpips

    worst, values = 0.0, []
    for seed in range(args.draws):
        lpips = LPIPS.random(seed=seed)
        g = torch.Generator().manual_seed(100 + seed)
        x, y = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
        d = lpips(x, y).double()
        worst = max(worst, (d - reference_lpips(lpips.weights(), x, y)).abs().max().item())
        values += d.tolist()
    print(f"{args.draws} weight draws x 2 pairs of random 2 x 3 x 32 x 32 images: distances "
          f"{min(values):.3f} to {max(values):.3f}; largest |float32 network - float64 "
          f"formula| = {worst:.1e} (the test's bound: 1e-6).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("cost")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cost)
    p = sub.add_parser("correctness")
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=correctness)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
