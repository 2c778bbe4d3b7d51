"""The collapse study: every quantizer family in one autoencoder, side by side.

One small Fashion-MNIST autoencoder (vqtok's Encoder and Decoder at 8, 16 and 32 channels,
4x downsampling of the 28 x 28 images to 7 x 7 tokens of dim 16) is trained with each quantizer at
codebook sizes around 1k, 16k and 65k, and with vector-quantize-pytorch's equivalents (it
has none of IBQ) in the same autoencoder, with the same seed, the same batches in the same order and the same
optimiser. Each run is then measured on the whole Fashion-MNIST test split (10,000 images):
codebook usage and perplexity of the ids (docs/algorithms.md#codebook-usage), and PSNR.
For LFQ and BSQ it also measures, on the same test batches, how far the grouped bound of
the batch entropy lies above its exact value (docs/algorithms.md#lfq, L4 and L5).

Sizes: VQ, SimVQ, IBQ and residual VQ use K = 1,024, 16,384 and 65,536 codes (the residual
quantizer: 2 stages of K); FSQ the presets 1,000, 15,360 and 64,000; LFQ and BSQ 2^10,
2^14 and 2^16.

Run (the reference rows need the ``bench`` extra, which ``make bench`` installs, and
Fashion-MNIST in the data cache, ``vqtok data fashion-mnist``)::

    .venv/bin/python experiments/collapse_study.py

It writes experiments/RESULTS_collapse.md, one run directory per run under
runs/collapse_study/ (a codebook history and, for vqtok's quantizers, the exported
tokenizer), and experiments/RESULTS_collapse.html with its JSON: one `vqtok report` page
over every run. ``--quick`` trains a handful of steps at small sizes (what the test suite
runs). RESULTS_collapse.md says how long the full study took here.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from vqtok.data import FashionMNIST
from vqtok.formats import history as history_format
from vqtok.formats.tokenizer_dir import save_tokenizer_dir
from vqtok.metrics import CodebookUsage, stage_slots, usage_stats
from vqtok.models import Decoder, Encoder, VQAutoencoder
from vqtok.quantizers import (
    BSQ,
    FSQ,
    IBQ,
    LFQ,
    QuantizerOutput,
    ResidualQuantizer,
    SimVQ,
    VectorQuantizer,
)
from vqtok.report import build_report
from vqtok.training.optim import adamw_warmup_cosine

HERE = Path(__file__).resolve().parent
DIM = 16
AUTOENCODER = {"channels": 8, "channel_mult": (1, 2, 4), "num_res_blocks": 1, "dim": DIM}
SIZES = {"1k": 1024, "16k": 16384, "65k": 65536}
FSQ_LEVELS = {"1k": [8, 5, 5, 5], "16k": [8, 8, 8, 6, 5], "65k": [8, 8, 8, 5, 5, 5]}
BITS = {"1k": 10, "16k": 14, "65k": 16}
QUICK_SIZES = {"1k": 64}
QUICK_FSQ = {"1k": [4, 4, 4]}
QUICK_BITS = {"1k": 6}
RESULT_NAME = "result.json"
GROUP_BITS = 9  # LFQ and BSQ default entropy_group_size


# ---- the quantizers ---------------------------------------------------------------------


def vqtok_quantizers(size: str, quick: bool) -> dict[str, Callable[[], nn.Module]]:
    k = (QUICK_SIZES if quick else SIZES)[size]
    levels = (QUICK_FSQ if quick else FSQ_LEVELS)[size]
    bits = (QUICK_BITS if quick else BITS)[size]
    return {
        "vq_ste": lambda: VectorQuantizer(k, DIM),
        "vq_rotation": lambda: VectorQuantizer(k, DIM, grad_estimator="rotation"),
        "vq_ema_restart": lambda: VectorQuantizer(k, DIM, ema_decay=0.99, restart_after=2.0),
        "simvq": lambda: SimVQ(k, DIM),
        "ibq": lambda: IBQ(k, DIM),
        "fsq": lambda: FSQ(levels=levels, dim=DIM),
        "lfq": lambda: LFQ(bits=bits, dim=DIM),
        "bsq": lambda: BSQ(bits=bits, dim=DIM),
        "residual_vq": lambda: ResidualQuantizer([VectorQuantizer(k, DIM) for _ in range(2)]),
    }


class Reference(nn.Module):
    """A vector-quantize-pytorch quantizer behind vqtok's contract, so it trains in the
    same autoencoder: ``(B, D, h, w)`` in, ``QuantizerOutput`` out, its auxiliary loss
    under ``"aux"``."""

    def __init__(self, module: nn.Module, codebook_size: int, num_stages: int | None = None,
                 tokens_last: bool = False, **call: object) -> None:
        super().__init__()
        self.module, self.codebook_size, self.num_stages = module, codebook_size, num_stages
        self.tokens_last, self.call = tokens_last, call

    def forward(self, z: Tensor) -> QuantizerOutput:
        b, d, h, w = z.shape
        if self.tokens_last:  # handed (B, h*w, D): its image-map path fails when h != D
            out = self.module(z.flatten(2).transpose(1, 2), **self.call)
            out = (out[0].transpose(1, 2).reshape(b, d, h, w), out[1].reshape(b, h, w, -1),
                   *out[2:])
        else:
            out = self.module(z, **self.call)
        z_q, ids = out[0], out[1]
        aux = out[2] if len(out) > 2 and out[2] is not None else z.new_zeros(())
        if self.num_stages is None and ids.ndim == 4:  # (B, h, w, 1) from FSQ, say
            ids = ids[..., 0]
        return QuantizerOutput(z_q=z_q, indices=ids.long(), losses={"aux": aux.sum()})


def reference_quantizers(size: str, quick: bool) -> dict[str, Callable[[], nn.Module]]:
    """vector-quantize-pytorch's equivalents, as benchmarks/quantizers.py builds them."""
    from vector_quantize_pytorch import FSQ as RefFSQ
    from vector_quantize_pytorch import LFQ as RefLFQ
    from vector_quantize_pytorch import ResidualVQ, VectorQuantize
    from vector_quantize_pytorch import SimVQ as RefSimVQ

    k = (QUICK_SIZES if quick else SIZES)[size]
    levels = (QUICK_FSQ if quick else FSQ_LEVELS)[size]
    bits = (QUICK_BITS if quick else BITS)[size]
    learned = {"learnable_codebook": True, "ema_update": False, "commitment_weight": 1.0,
               "kmeans_init": True}  # vqtok's VQ rows start from k-means too
    return {
        "vq_ste": lambda: Reference(VectorQuantize(
            dim=DIM, codebook_size=k, accept_image_fmap=True, rotation_trick=False, **learned), k),
        "vq_rotation": lambda: Reference(VectorQuantize(
            dim=DIM, codebook_size=k, accept_image_fmap=True, rotation_trick=True, **learned), k),
        "vq_ema_restart": lambda: Reference(VectorQuantize(
            dim=DIM, codebook_size=k, accept_image_fmap=True, decay=0.99, kmeans_init=True,
            threshold_ema_dead_code=2, commitment_weight=0.25), k),
        "simvq": lambda: Reference(RefSimVQ(dim=DIM, codebook_size=k, channel_first=True), k),
        "fsq": lambda: Reference(RefFSQ(levels=levels, dim=DIM, channel_first=True),
                                 math.prod(levels)),
        "lfq": lambda: Reference(RefLFQ(dim=DIM, codebook_size=2**bits, entropy_loss_weight=0.1,
                                        commitment_loss_weight=0.25, channel_first=True),
                                 2**bits, inv_temperature=100.0),
        "bsq": lambda: Reference(RefLFQ(dim=DIM, codebook_size=2**bits, entropy_loss_weight=0.1,
                                        commitment_loss_weight=0.0, spherical=True,
                                        channel_first=True), 2**bits, inv_temperature=1.0),
        "residual_vq": lambda: Reference(ResidualVQ(
            dim=DIM, codebook_size=k, num_quantizers=2, **learned),
            k, num_stages=2, tokens_last=True),
    }


# ---- one run ----------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    library: str
    size: str
    codebook_size: int
    usage: float
    perplexity: float
    psnr: float
    seconds_per_step: float
    run_dir: Path
    entropy: tuple[float, float] | None = None
    load: float = math.nan  # the 1-minute load average when the run started
    threads: int = 0  # torch threads of the run
    minutes: float = math.nan  # training and evaluation

    def save(self, settings: dict) -> None:
        """``result.json`` in the run directory: a later study with the same settings
        reuses the run instead of training it again."""
        doc = {**dataclasses.asdict(self), "run_dir": str(self.run_dir), "settings": settings}
        (self.run_dir / RESULT_NAME).write_text(json.dumps(doc, indent=1) + "\n")

    @classmethod
    def load_saved(cls, run_dir: Path, settings: dict) -> Result | None:
        try:
            doc = json.loads((run_dir / RESULT_NAME).read_text())
        except (OSError, ValueError):
            return None
        if doc.pop("settings", None) != settings:
            return None
        doc["run_dir"] = run_dir
        doc["entropy"] = tuple(doc["entropy"]) if doc.get("entropy") else None
        return cls(**doc)


def train_one(quantizer: nn.Module, data: FashionMNIST, test: FashionMNIST, steps: int,
              batch_size: int, seed: int, run_dir: Path, library: str) -> Result:
    """Train encoder -> quantizer -> decoder for ``steps`` steps (L1 + the quantizer's
    losses, AdamW), then measure on the whole test split."""
    torch.manual_seed(seed)
    encoder = Encoder(in_channels=1, **AUTOENCODER)
    decoder = Decoder(out_channels=1, **AUTOENCODER)
    params = [*encoder.named_parameters(), *[(f"q.{n}", p) for n, p in
                                            quantizer.named_parameters()],
              *decoder.named_parameters()]
    optim = adamw_warmup_cosine(params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0,
                                warmup_steps=min(100, steps // 4), total_steps=steps)
    optimizer, schedule = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    order = torch.Generator().manual_seed(seed)  # the same batches for every run
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=order,
                        drop_last=True)
    k, stages = quantizer.codebook_size, getattr(quantizer, "num_stages", None)
    times, train_curve, step = [], [], 0
    for module in (encoder, quantizer, decoder):
        module.train()
    while step < steps:
        for x, _ in loader:
            start = time.perf_counter()
            out = quantizer(encoder(x))
            loss = F.l1_loss(decoder(out.z_q), x) + sum(out.losses.values(), x.new_zeros(()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            times.append(time.perf_counter() - start)
            step += 1
            if step == 1 or step % 25 == 0:
                ids = stage_slots(out.indices, k) if stages else out.indices
                batch = usage_stats(torch.bincount(ids.reshape(-1), minlength=k * (stages or 1)))
                train_curve.append({"step": step, "epoch": 0,
                                    "batch_usage": float(batch["usage"]),
                                    "batch_perplexity": float(batch["perplexity"]),
                                    "batch_ids": int(ids.numel())})
            if step == steps:
                break
    usage, psnr, gap = evaluate(encoder, quantizer, decoder, test, k, stages)
    counts = usage.counts.clone()
    stats = usage_stats(counts)
    record = {"step": steps, "epoch": 0, "usage": float(stats["usage"]),
              "perplexity": float(stats["perplexity"]), "dead_codes": int(stats["dead_codes"]),
              "normalized_entropy": float(stats["normalized_entropy"]), "psnr": psnr,
              "ssim": None, "total_ids": int(counts.sum())}
    write_run(run_dir, quantizer, k, stages, record, counts, train_curve, library)
    if library == "vqtok":
        save_tokenizer_dir(VQAutoencoder(encoder, quantizer, decoder).eval(),
                           run_dir / "tokenizer")
    per_step = statistics.median(times[min(5, len(times) - 1):])
    return Result(run_dir.name, library, "", k, record["usage"], record["perplexity"], psnr,
                  per_step, run_dir, gap)


@torch.no_grad()
def evaluate(encoder: nn.Module, quantizer: nn.Module, decoder: nn.Module,
             test: FashionMNIST, k: int, stages: int | None
             ) -> tuple[CodebookUsage, float, tuple[float, float] | None]:
    """Per-code counts of the test split's ids, the PSNR of the reconstructions (pixels
    in [-1, 1], data range 2), and for LFQ/BSQ the mean exact and grouped batch entropy."""
    for module in (encoder, quantizer, decoder):
        module.eval()
    usage = CodebookUsage(k, stages)
    squared, pixels, gaps = 0.0, 0, []
    for x, _ in DataLoader(test, batch_size=32):  # 32 x 49 rows: references hold N x K
        z = encoder(x)
        out = quantizer(z)
        usage.update(out.indices)
        x_hat = decoder(out.z_q).clamp(-1, 1)
        squared += float(((x_hat - x) ** 2).sum())
        pixels += x.numel()
        if isinstance(quantizer, LFQ) and quantizer.entropy_weight > 0:
            gaps.append(entropy_gap(quantizer, z))
    gap = (statistics.mean(g[0] for g in gaps), statistics.mean(g[1] for g in gaps)) \
        if gaps else None
    return usage, 10 * math.log10(4.0 / (squared / pixels)), gap


def entropy_gap(quantizer: LFQ, z: Tensor) -> tuple[float, float]:
    """``(exact H, grouped bound)`` in nats of one batch's mean code distribution, read from
    the quantizer's own ``codebook_entropy`` loss in each mode (it is -w_e gamma H)."""
    mode, values = quantizer.codebook_entropy, []
    try:
        for entropy in ("exact", "grouped"):
            quantizer.codebook_entropy = entropy
            loss = quantizer(z).losses["codebook_entropy"]
            values.append(-float(loss) / (quantizer.entropy_weight * quantizer.diversity_gamma))
    finally:
        quantizer.codebook_entropy = mode
    return values[0], values[1]


def write_run(run_dir: Path, quantizer: nn.Module, k: int, stages: int | None,
              record: dict, counts: Tensor, train_curve: list[dict], library: str) -> None:
    """The run's codebook history (docs/formats.md#codebook-history), for `vqtok report`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    name = type(quantizer.module if isinstance(quantizer, Reference) else quantizer)
    doc = {"format": history_format.FORMAT, "format_version": history_format.FORMAT_VERSION,
           "codebook_size": k, "quantizer": f"{library}:{name.__module__}.{name.__qualname__}",
           "quantizer_config": "", "counts_file": history_format.COUNTS_NAME,
           "every_n_steps": 25, "validations": [record], "train": train_curve}
    if stages:
        doc["num_stages"] = stages
    history_format.write_history(run_dir, doc, counts.numpy()[None].astype(np.int64),
                                 np.array([record["step"]], dtype=np.int64))


# ---- the study --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per run (300; 5 with --quick)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--quantizers", nargs="+", default=None,
                        help="a subset of the quantizers (default: all)")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip vector-quantize-pytorch (needed when it is not installed)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny codebooks and a few steps: checks that the study runs")
    parser.add_argument("--runs", default="runs/collapse_study", help="run directories")
    parser.add_argument("--out", default=str(HERE / "RESULTS_collapse.md"))
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (on a machine shared with other work, 1 avoids "
                             "threads waiting on each other: several times faster here)")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: write the table and the report page from the "
                             "runs already done (a study that is still partial)")
    parser.add_argument("--again", action="store_true",
                        help="train every run again, even one whose result.json has these "
                             "settings (by default such runs are reused: a study can be "
                             "stopped and continued)")
    args = parser.parse_args(argv)
    args.missing = []  # runs --collect found not done
    torch.set_num_threads(args.threads)
    if args.steps is None:
        args.steps = 5 if args.quick else 300
    sizes = ["1k"] if args.quick else args.sizes
    data = FashionMNIST(None, "train", pad_to=None)  # 28 x 28: 7 x 7 tokens
    test = FashionMNIST(None, "test", pad_to=None)
    if args.quick:
        test = torch.utils.data.Subset(test, range(64))
    started, results = time.perf_counter(), []
    load = _load_average()
    settings = {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
                "quick": args.quick, "autoencoder": repr(AUTOENCODER)}
    for size in sizes:
        libraries = {"vqtok": vqtok_quantizers(size, args.quick)}
        if not args.no_reference:
            libraries["vector-quantize-pytorch"] = reference_quantizers(size, args.quick)
        for name in args.quantizers or list(libraries["vqtok"]):
            for library, factories in libraries.items():
                if name not in factories:  # vector-quantize-pytorch has no IBQ
                    continue
                tag = "ref" if library != "vqtok" else "vqtok"
                run_dir = Path(args.runs) / f"{name}-{size}-{tag}"
                print(f"[{time.perf_counter() - started:7.0f} s] {library} {name} {size}",
                      flush=True)
                saved = Result.load_saved(run_dir, settings)
                if saved is not None and not args.again:
                    print("    reused (result.json with the same settings)", flush=True)
                    results.append(saved)
                    continue
                if args.collect:
                    print("    not run yet", flush=True)
                    args.missing.append(f"{name} {size} ({library})")
                    continue
                run_load, run_started = _load_average(), time.perf_counter()
                try:
                    result = train_one(factories[name](), data, test, args.steps,
                                       args.batch_size, args.seed, run_dir, library)
                except (RuntimeError, MemoryError) as err:  # the reference's N x K, say
                    print(f"    failed: {type(err).__name__}: {str(err)[:200]}", flush=True)
                    results.append(Result(f"{name}-{size}-{tag}", library, size, 0,
                                          math.nan, math.nan, math.nan, math.nan, run_dir))
                    continue
                result.name, result.library, result.size = name, library, size
                result.load, result.threads = run_load, torch.get_num_threads()
                result.minutes = (time.perf_counter() - run_started) / 60
                result.save(settings)
                results.append(result)
                print(f"    usage {result.usage:.1%}, PSNR {result.psnr:.2f} dB, "
                      f"{result.seconds_per_step:.3f} s/step", flush=True)
                # the table so far, so a long study interrupted still leaves its rows
                write_table(Path(args.out), results, args,
                            (time.perf_counter() - started) / 60, load, len(test))
    minutes = (time.perf_counter() - started) / 60
    write_table(Path(args.out), results, args, minutes, load, len(test))
    run_dirs = [r.run_dir for r in results if r.codebook_size]
    # the report reconstructs Fashion-MNIST images (unpadded, as trained), not photos
    data_config = Path(args.runs) / "data.yaml"
    data_config.write_text("class_path: vqtok.training.data.FashionMNISTDataModule\n"
                           "init_args: {pad_to: 28, val_size: 16}\n")
    build_report(run_dirs, Path(args.out).with_suffix(".html"), data=data_config,
                 samples=2 if args.quick else 4, overwrite=True)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.html')} in {minutes:.1f} min")
    return 0


def _load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def write_table(out: Path, results: list[Result], args: argparse.Namespace, minutes: float,
                load: float, n_test: int) -> None:
    rows = [("| quantizer | size | library | codes | test usage | perplexity | PSNR (dB) | "
            "s/step | threads | load |"), "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if not r.codebook_size:
            rows.append(f"| {r.name} | {r.size} | {r.library} | | failed | | | | | |")
            continue
        rows.append(f"| {r.name} | {r.size} | {r.library} | {r.codebook_size:,} | "
                    f"{100 * r.usage:.1f}% | {r.perplexity:,.1f} | {r.psnr:.2f} | "
                    f"{r.seconds_per_step:.3f} | {r.threads or ''} | {r.load:.1f} |")
    gap_rows = [f"| {r.name} | {r.size} | {r.codebook_size:,} | {r.entropy[0]:.3f} | "
                f"{r.entropy[1]:.3f} | {r.entropy[1] - r.entropy[0]:.3f} | "
                f"{math.log(r.codebook_size):.3f} |" for r in results if r.entropy]
    if gap_rows:
        gap_rows = [
            ("Exact batch entropy against the grouped upper bound (groups of "
             f"{GROUP_BITS} bits, the last smaller), on each batch of 32 test images (1,568 "
             "ids), mean over the test split, in nats; log K is the most either can be."),
            "",
            "| quantizer | size | codes | exact H | grouped bound | gap | log K |",
            "|---|---|---:|---:|---:|---:|---:|",
            *gap_rows,
            "",
        ]
    text = [
        "# Collapse study: every quantizer in the same autoencoder",
        "",
        (f"`{' '.join([Path(sys.argv[0]).name, *(sys.argv[1:])])}` on "
        f"{dt.date.today().isoformat()}, {platform.machine()}, {torch.get_num_threads()} "
        f"threads, load average {load:.2f} at the start; {minutes:.0f} minutes in this "
        f"invocation; the runs' own training and evaluation took "
        f"{sum(r.minutes for r in results if not math.isnan(r.minutes)):.0f} minutes."),
        "",
        (f"Fashion-MNIST at 28 x 28, {args.steps} steps of {args.batch_size} images (seed "
        f"{args.seed}, the same batches for every run), Encoder/Decoder at 8 channels, "
        f"channel_mult (1, 2, 4), one residual block per level (7 x 7 tokens of dim 16), AdamW 1e-3 with warm-up and cosine decay. Usage, perplexity and "
        f"PSNR on {n_test:,} test images. Residual VQ: 2 stages of K codes, usage pooled over "
        f"the stages. s/step: median training step (forward, backward, update); load: the "
        f"1-minute load average when the run started (above 2, other work shared the 2 "
        f"cores and the run's s/step is slower than the machine's)."),
        "",
        *rows,
        "",
        *([f"Not run yet ({len(args.missing)}): {', '.join(args.missing)}.", ""]
          if getattr(args, "missing", None) else []),
        *gap_rows,
    ]
    out.write_text("\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
