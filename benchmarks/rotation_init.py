"""Is plain VQ's lower codebook usage with the rotation trick the estimator, or the
estimator with vqtok's k-means init?

The collapse study (experiments/RESULTS_collapse.md) has VectorQuantizer with the rotation
trick (Fifty et al. 2024) well below straight-through at every size, both started by
k-means on the first batch. This trains the study's autoencoder with the same protocol
(experiments/collapse_study.py: seed, batches, optimiser, 300 steps) for both estimators
under two starts: ``init="kmeans"`` (the default; 10 Lloyd iterations on the first batch)
and ``init="data"`` (rows of the first batch, no iterations; with fewer rows than codes,
the rest Gaussian at the rows' scale). If the estimator gap stays under both starts, it is
the estimator's; if it closes under one, it is the interaction.

Run::

    .venv/bin/python benchmarks/rotation_init.py --sizes 1k 16k

It writes benchmarks/RESULTS_rotation_init.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import collapse_study as study

from vqtok.data import FashionMNIST
from vqtok.quantizers import VectorQuantizer

HERE = Path(__file__).resolve().parent
ESTIMATORS = ("ste", "rotation")
INITS = ("kmeans", "data")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1k", "16k"], choices=list(study.SIZES))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default="runs/rotation_init")
    parser.add_argument("--out", default=str(HERE / "RESULTS_rotation_init.md"))
    parser.add_argument("--collect", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    if not args.collect:
        data = FashionMNIST(None, "train", pad_to=None)
        test = FashionMNIST(None, "test", pad_to=None)
        for size in args.sizes:
            for init in INITS:
                for estimator in ESTIMATORS:
                    name = f"{estimator}-{init}-{size}"
                    print(name, flush=True)
                    load = os.getloadavg()[0]
                    q = VectorQuantizer(study.SIZES[size], study.DIM, init=init,
                                        grad_estimator=estimator)
                    r = study.train_one(q, data, test, args.steps, 32, 0, runs / name, "vqtok")
                    row = {"estimator": estimator, "init": init, "size": size,
                           "usage": r.usage, "perplexity": r.perplexity, "psnr": r.psnr,
                           "seconds_per_step": r.seconds_per_step, "load": load,
                           "time": time.strftime("%Y-%m-%dT%H:%M")}
                    (runs / f"{name}.json").write_text(json.dumps(row, indent=1) + "\n")
                    print(f"    usage {r.usage:.1%}, PSNR {r.psnr:.2f} dB", flush=True)
    rows = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    lines = ["| size | init | estimator | test usage | perplexity | PSNR (dB) | s/step | load |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for size in study.SIZES:
        for init in INITS:
            for estimator in ESTIMATORS:
                for d in rows:
                    if (d["size"], d["init"], d["estimator"]) == (size, init, estimator):
                        lines.append(f"| {size} | {init} | {estimator} | "
                                     f"{100 * d['usage']:.1f}% | {d['perplexity']:,.1f} | "
                                     f"{d['psnr']:.2f} | {d['seconds_per_step']:.3f} | "
                                     f"{d['load']:.1f} |")
    text = Path(args.out).read_text().split("\n<!-- table -->\n") \
        if Path(args.out).exists() else ["", ""]
    head = text[0] or f"# Rotation trick against straight-through, by init ({platform.machine()})\n"
    tail = text[1].split("\n<!-- end -->\n", 1)[1] if "<!-- end -->" in text[-1] else ""
    Path(args.out).write_text(f"{head}\n<!-- table -->\n" + "\n".join(lines)
                              + "\n\n<!-- end -->\n" + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
