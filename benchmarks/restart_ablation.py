"""Ablation of the dead-code restart of the EMA codebook, beside vector-quantize-pytorch.

Every variant trains the collapse study's autoencoder (experiments/collapse_study.py: the
same encoder, decoder, seed, batches, optimiser and 300 steps of 32 Fashion-MNIST images,
1,568 rows a step) with an EMA codebook (decay 0.99, k-means init) and one restart rule,
and is measured on the 10,000 test images: codebook usage, perplexity, PSNR, and how many
codes the restart reset during training. The axes (docs/algorithms.md#codebook-init-and-restart):

- the dead test: ``share`` (the usage EMA, relative to uniform use, under tau: vqtok's rule
  before this ablation, tau = 0.001 as experiments/fmnist_vq_ema.yaml shipped it), ``count``
  (the EMA count N_k in rows under tau = 2: vector-quantize-pytorch's
  ``threshold_ema_dead_code``), ``missed`` (the rows a code would have received at its fair
  share since it was last chosen, sum of N_t / K, reach tau);
- sampling: at most one distinct batch row per dead code and step (the rest wait for the
  next step) against every dead code at once, with repeated rows when there are more dead
  codes than rows;
- frequency: the dead test every step or every 10 steps;
- the statistics of a restarted code: N_k and m_k reset (to the mean count, m_k = e_k N_k)
  or left as they were (then the next EMA update pulls the code back to m_k / N_k).

Run (the reference needs the ``bench`` extra; each variant writes its JSON under --runs,
so the table can be collected from runs made in several invocations)::

    .venv/bin/python benchmarks/restart_ablation.py --sizes 1k 16k 65k
    .venv/bin/python benchmarks/restart_ablation.py --collect

It writes benchmarks/RESULTS_restart.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import collapse_study as study

from vqtok.data import FashionMNIST
from vqtok.quantizers import VectorQuantizer
from vqtok.quantizers import functional as Fq

HERE = Path(__file__).resolve().parent


class AblatedVQ(VectorQuantizer):
    """VectorQuantizer (EMA, k-means init) with the restart rule given by the axes above;
    ``restarts`` counts the codes reset."""

    def __init__(self, k: int, *, rule: str, tau: float, cap: bool = True, every: int = 1,
                 reset: bool = True) -> None:
        super().__init__(k, study.DIM, ema_decay=0.99, restart_threshold=None)
        self.rule, self.tau, self.cap, self.every, self.reset = rule, tau, cap, every, reset
        self.register_buffer("missed", torch.zeros(k))
        self.steps = self.restarts = 0

    def quantize_rows(self, rows: Tensor):
        if self.training and bool(self.initialized):
            self.steps += 1
            if self.steps % self.every == 0:
                self.ablated_restart(rows)
        return super().quantize_rows(rows)

    def dead_codes(self) -> Tensor:
        if self.rule == "share":
            return self.usage < self.tau
        if self.rule == "count":
            return self.ema_count < self.tau
        return self.missed >= self.tau

    @torch.no_grad()
    def ablated_restart(self, rows: Tensor) -> None:
        dead = self.dead_codes().nonzero().squeeze(1)  # (M,)
        n = rows.shape[0]
        if dead.numel() == 0:
            return
        if self.cap and dead.numel() > n:  # n of them now, the rest later
            if self.rule == "count":  # the reference: a random n
                dead = dead[torch.randperm(dead.numel())[:n]]
            else:  # as the library: unchosen longest first, ties to the lower id
                order = torch.sort(self.missed[dead], descending=True, stable=True).indices
                dead = dead[order[:n]]
        if dead.numel() <= n:
            pick = torch.randperm(n)[:dead.numel()]
        else:
            pick = torch.randint(n, (dead.numel(),))
        new = rows.detach()[pick]
        self.codebook.index_copy_(0, dead, new)
        if self.reset:
            if self.rule == "count":  # the reference's reset_cluster_size = threshold
                count = torch.full((dead.numel(),), self.tau)
            else:
                count = (self.ema_count.sum() / self.codebook_size).expand(dead.numel())
            self.ema_count.index_copy_(0, dead, count.clone())
            self.ema_sum.index_copy_(0, dead, new * count[:, None])
        self.usage.index_fill_(0, dead, 1.0)
        self.missed.index_fill_(0, dead, 0.0)
        self.restarts += dead.numel()

    @torch.no_grad()
    def update_statistics(self, rows: Tensor, ids: Tensor) -> None:
        super().update_statistics(rows, ids)
        counts = Fq.code_counts(ids, self.codebook_size)
        self.missed.add_(rows.shape[0] / self.codebook_size).masked_fill_(counts > 0, 0.0)


def library(k: int) -> nn.Module:
    """The library's VectorQuantizer with ``restart_after=2.0``, as experiments/fmnist_vq_ema.yaml
    configures it; ``restarts`` counts the codes its restart_dead_codes reset."""
    q = VectorQuantizer(k, study.DIM, ema_decay=0.99, restart_after=2.0)
    q.restarts = 0
    restart = q.restart_dead_codes

    def counting(rows: Tensor) -> int:
        n = restart(rows)
        q.restarts += n
        return n

    q.restart_dead_codes = counting
    return q


VARIANTS: dict[str, tuple[str, Callable[[int], nn.Module]]] = {
    "share-0.001": ("share < 0.001, all at once, every step, reset (as shipped)",
                    lambda k: AblatedVQ(k, rule="share", tau=0.001, cap=False)),
    "count-2": ("N_k < 2 rows, capped, every step, reset to 2 (the reference's rule)",
                lambda k: AblatedVQ(k, rule="count", tau=2.0)),
    "missed-2": (("missed >= 2 rows, capped, every step, reset: the library's "
                  "VectorQuantizer(restart_after=2.0)"), library),
    "missed-2-uncapped": ("missed >= 2 rows, all at once (repeated rows), every step, reset",
                          lambda k: AblatedVQ(k, rule="missed", tau=2.0, cap=False)),
    "missed-2-every10": ("missed >= 2 rows, capped, every 10 steps, reset",
                         lambda k: AblatedVQ(k, rule="missed", tau=2.0, every=10)),
    "missed-2-noreset": ("missed >= 2 rows, capped, every step, N_k and m_k kept",
                         lambda k: AblatedVQ(k, rule="missed", tau=2.0, reset=False)),
}


def reference(k: int) -> nn.Module:
    """The collapse study's vector-quantize-pytorch EMA row; counts the codes it replaces."""
    from vector_quantize_pytorch import VectorQuantize

    ref = study.Reference(VectorQuantize(dim=study.DIM, codebook_size=k, accept_image_fmap=True,
                                         decay=0.99, kmeans_init=True,
                                         threshold_ema_dead_code=2, commitment_weight=0.25), k)
    ref.restarts = 0
    codebook = ref.module._codebook
    replace = codebook.replace

    def counting(batch_samples: Tensor, batch_mask: Tensor, seq_mask: Tensor | None = None):
        ref.restarts += int(min(batch_mask.sum(), batch_samples.shape[-2]))
        return replace(batch_samples, batch_mask, seq_mask)

    codebook.replace = counting
    return ref


def run(name: str, factory: Callable[[int], nn.Module], size: str, args: argparse.Namespace,
        data: FashionMNIST, test: FashionMNIST) -> dict:
    k = study.SIZES[size]
    quantizer = factory(k)
    load, started = os.getloadavg()[0], time.perf_counter()
    # "vqtok" exports the tokenizer, which only registered classes can; AblatedVQ is not
    library = {"reference": "vector-quantize-pytorch", "missed-2": "vqtok"}.get(name, "ablation")
    result = study.train_one(quantizer, data, test, args.steps, args.batch_size, args.seed,
                             Path(args.runs) / f"{name}-{size}", library)
    restarts = quantizer.restarts
    return {"variant": name, "size": size, "usage": result.usage,
            "perplexity": result.perplexity, "psnr": result.psnr,
            "restarts": restarts, "seconds_per_step": result.seconds_per_step,
            "minutes": (time.perf_counter() - started) / 60, "load": load,
            "steps": args.steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(study.SIZES),
                        choices=list(study.SIZES))
    parser.add_argument("--variants", nargs="+", default=[*VARIANTS, "reference"],
                        choices=[*VARIANTS, "reference"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default="runs/restart_ablation")
    parser.add_argument("--study-runs", default="runs/collapse_study",
                        help="the collapse study's run directories")
    parser.add_argument("--out", default=str(HERE / "RESULTS_restart.md"))
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: write the table from the runs' JSON files")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    if not args.collect:
        data = FashionMNIST(None, "train", pad_to=None)
        test = FashionMNIST(None, "test", pad_to=None)
        for size in args.sizes:
            for name in args.variants:
                factory = reference if name == "reference" else VARIANTS[name][1]
                print(f"{name} {size}", flush=True)
                row = run(name, factory, size, args, data, test)
                (runs / f"{name}-{size}.json").write_text(json.dumps(row, indent=1) + "\n")
                print(f"    usage {row['usage']:.1%}, PSNR {row['psnr']:.2f} dB, "
                      f"restarts {row['restarts']}", flush=True)
    write_table(Path(args.out), runs, Path(args.study_runs))
    return 0


def write_table(out: Path, runs: Path, study_runs: Path) -> None:
    rows = {(d["variant"], d["size"]): d for d in
            (json.loads(p.read_text()) for p in sorted(runs.glob("*.json")))}
    # missed-2 is the collapse study's vq_ema_restart row with the same protocol (bit for bit
    # at 1k, where both ran): where only the study ran it, its result.json stands in, without
    # a restart count
    for size in study.SIZES:
        saved = study_runs / f"vq_ema_restart-{size}-vqtok" / study.RESULT_NAME
        if ("missed-2", size) not in rows and saved.exists():
            d = json.loads(saved.read_text())
            rows["missed-2", size] = {**d, "variant": "missed-2", "restarts": None,
                                      "from_study": True}
    lines = [("| variant | rule | size | test usage | perplexity | PSNR (dB) | restarts | "
              "s/step | load |"), "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for size in study.SIZES:
        for name in [*VARIANTS, "reference"]:
            d = rows.get((name, size))
            if d is None:
                continue
            what = VARIANTS[name][0] if name in VARIANTS else \
                "vector-quantize-pytorch, EMA, k-means, threshold_ema_dead_code=2"
            restarts = "(study run)" if d.get("from_study") else f"{d['restarts']:,}"
            lines.append(f"| {name} | {what} | {size} | {100 * d['usage']:.1f}% | "
                         f"{d['perplexity']:,.1f} | {d['psnr']:.2f} | {restarts} | "
                         f"{d['seconds_per_step']:.3f} | {d['load']:.1f} |")
    text = out.read_text().split("\n<!-- table -->\n") if out.exists() else ["", ""]
    head = text[0] or f"# Dead-code restart ablation ({platform.machine()})\n"
    tail = text[1].split("\n<!-- end -->\n", 1)[1] if "<!-- end -->" in text[-1] else ""
    out.write_text(f"{head}\n<!-- table -->\n" + "\n".join(lines) + "\n\n<!-- end -->\n" + tail)


if __name__ == "__main__":
    sys.exit(main())
