"""Position-scheme ablation: RoPE-Tie-v2 vs M-RoPE vs 1D vs NoPE.

The same decoder (same size, same initialisation, same batches in the same order, same
steps) is trained on the Fashion-MNIST caption + image streams once per position scheme;
the metric is the validation cross-entropy on image tokens only (``val/image_loss``, nats
per token), on held-out training images.

Run: ``.venv/bin/python benchmarks/decoder_ablation.py`` (2 seeds x 4 schemes x 300 steps:
about 14 minutes on this 2-core machine with other jobs running; ``--steps``, ``--seeds``
trade time for precision). Tokenizing the 60,000 training images first takes about 8
minutes once; the ids are cached in ``runs/token_cache``. Replaces its own section of
``benchmarks/RESULTS_decoder.md`` (or ``--out``), keeping the others.

Larger grids: ``--image-size 64`` scales the 32 x 32 padded images to 64 x 64 before the 4x
tokenizer, so each image is a 16 x 16 grid (``--limit-train`` bounds how many training images
are tokenized); its table gets its own section. Given a video tokenizer (``--tokenizer
checkpoints/moving_fmnist_video``), the streams are captioned Moving Fashion-MNIST clips
(``--num-frames``, ``--limit-train`` clips; held-out clips from the test split) and the table
goes to the video grids' section.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from vqtok.lm.data import CaptionImageDataModule
from vqtok.lm.train import LMModule

SCHEMES = ("rope_tie_v2", "mrope", "1d", "nope")
HEADING = "## Decoder: position-scheme ablation"
log = logging.getLogger("decoder_ablation")


def quiet() -> None:
    """Lightning's per-run banners and hints off; warnings about tiny logs too."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", category=UserWarning)


def make_data(args: argparse.Namespace, scheme: str) -> CaptionImageDataModule:
    return CaptionImageDataModule(
        args.tokenizer, root=args.data_root, position_scheme=scheme,
        batch_size=args.batch_size, val_size=args.val_size, cache_dir=args.cache_dir,
        image_size=args.image_size, limit_train=args.limit_train, num_frames=args.num_frames)


def train_decoder(args: argparse.Namespace, scheme: str, seed: int
                  ) -> tuple[LMModule, CaptionImageDataModule, dict[str, Any]]:
    """Train one decoder for ``args.steps`` steps; returns it, its data and the validation
    metrics (plus the training time)."""
    pl.seed_everything(seed, verbose=False)
    data = make_data(args, scheme)
    module = LMModule.from_vocabulary(
        data.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
        position_scheme=scheme, rope_base=args.rope_base, lr=args.lr,
        warmup_steps=args.warmup, weight_decay=0.1)
    trainer = pl.Trainer(
        max_steps=args.steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        gradient_clip_val=1.0, num_sanity_val_steps=0, log_every_n_steps=10**9)
    data.setup("fit")  # tokenize (or read the cache) outside the timed part
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    train_s = time.perf_counter() - start
    evaluator = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                           accelerator="cpu")
    metrics = evaluator.validate(module, datamodule=data, verbose=False)[0]
    metrics = {k: float(v) for k, v in metrics.items()}
    metrics["train_s"] = train_s
    return module.eval(), data, metrics


def update_section(path: Path, heading: str, text: str) -> None:
    """Replace the ``heading`` section of a markdown file (up to the next ``## ``), or
    append it; the other sections stay as they are."""
    old = path.read_text() if path.is_file() else ""
    lines = old.splitlines()
    if heading in lines:
        start = lines.index(heading)
        stop = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                    len(lines))
        lines[start:stop] = text.rstrip("\n").splitlines() + [""]
        new = "\n".join(lines) + "\n"
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text.rstrip("\n") + "\n"
    path.write_text(new)


def environment(threads: int) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, "
            f"torch.set_num_threads({threads}), load average {load:.1f} at the start")


def add_common_arguments(parser: argparse.ArgumentParser, steps: int, d_model: int,
                         layers: int, warmup: int) -> None:
    """The data, model and training options both benchmarks share (defaults per script)."""
    parser.add_argument("--tokenizer", default="checkpoints/fmnist_fsq")
    parser.add_argument("--data-root", default=None,
                        help="Fashion-MNIST folder (default: the data cache, docs/data.md)")
    parser.add_argument("--cache-dir", default="runs/token_cache")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=None,
                        help="scale the padded 32 x 32 images to this side before tokenizing "
                             "(64 with a 4x tokenizer: 16 x 16 grids); default: 32")
    parser.add_argument("--limit-train", type=int, default=None,
                        help="use only the first this-many training images or clips "
                             "(default: all)")
    parser.add_argument("--num-frames", type=int, default=17,
                        help="frames per clip with a video tokenizer (default 17)")
    parser.add_argument("--d-model", type=int, default=d_model)
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--rope-base", type=float, default=10000.0,
                        help="RoPE base (theta_i = base^(-2i/d))")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (2 on a quiet 2-core machine)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).with_name("RESULTS_decoder.md"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, steps=300, d_model=96, layers=3, warmup=30)
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet()
    env = environment(args.threads)
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in args.schemes}
    start = time.perf_counter()
    for seed in args.seeds:
        for scheme in args.schemes:
            _, data, metrics = train_decoder(args, scheme, seed)
            results[scheme].append(metrics)
            log.info("seed %d %-12s val/image_loss %.4f  val/loss %.4f  (%.0f s)", seed,
                         scheme, metrics["val/image_loss"], metrics["val/loss"],
                         metrics["train_s"])
    wall_min = (time.perf_counter() - start) / 60
    h, w = data.image_tokens
    if data.video:
        t = data.video_tokens[0]
        heading = f"{HEADING}, {t} x {h} x {w} video grids"
        streams = (f"Moving Fashion-MNIST `[BOS] <caption> [BOV] {t}x{h}x{w} codes [EOV] [EOS]` "
                   f"streams (clips of {args.num_frames} frames of {data.image_size} x "
                   f"{data.image_size}, captions such as \"a bag moving up and a shirt moving "
                   f"right\"; training clips 0..{len(data.train_set) - 1} of the train split)")
        metric = (f"the {t * h * w} video tokens of {args.val_size} held-out clips (sprites "
                  f"from the Fashion-MNIST test split)")
    else:
        heading = HEADING if (h, w) == (8, 8) else f"{HEADING}, {h} x {w} image grids"
        subset = (f"the first {args.limit_train} training images" if args.limit_train
                  else "the training images")
        streams = (f"Fashion-MNIST `[BOS] a photo of a(n) <class> [BOI] {h}x{w} codes [EOI] "
                   f"[EOS]` streams ({data.image_size} x {data.image_size} images from "
                   f"{subset})")
        metric = f"the {h * w} image tokens of {args.val_size} held-out training images"
    if args.rope_base != 10000:
        heading += f", rope_base {args.rope_base:g}"
    best = min(statistics.mean(r["val/image_loss"] for r in results[s]) for s in args.schemes)
    seeds = " ".join(map(str, args.seeds))
    rows = [("| scheme | val image loss (nats/token) | per seed | val loss, all tokens | "
             "vs best | train time (s) |"), "|---|---:|---|---:|---:|---:|"]
    for scheme in args.schemes:
        runs = results[scheme]
        image = statistics.mean(r["val/image_loss"] for r in runs)
        per_seed = " / ".join(f"{r['val/image_loss']:.4f}" for r in runs)
        rows.append(
            f"| {scheme} | {image:.4f} | {per_seed} | "
            f"{statistics.mean(r['val/loss'] for r in runs):.4f} | {image - best:+.4f} | "
            f"{statistics.mean(r['train_s'] for r in runs):.0f} |")
    text = "\n".join([
        heading, "",
        (f"Same decoder (d_model={args.d_model}, {args.layers} layers, {args.heads} heads, MHA, "
         f"tied embeddings, RoPE base {args.rope_base:g}), same initialisation and batch order per seed, {args.steps} steps "
         f"of {args.batch_size} streams (AdamW lr {args.lr:g}, {args.warmup} warm-up steps, "
         f"cosine decay), on {streams} tokenized by `{args.tokenizer}`; the metric is the "
         f"cross-entropy on {metric} (`val/image_loss`). Seeds: {seeds.replace(' ', ', ')}. {env}. Wall time "
         f"{wall_min:.0f} minutes for the {len(args.seeds) * len(args.schemes)} runs."),
        "", *rows, "",
        (f"Command: `.venv/bin/python benchmarks/decoder_ablation.py --tokenizer "
         f"{args.tokenizer} --steps {args.steps} --batch-size {args.batch_size} --d-model "
         f"{args.d_model} --layers {args.layers} --heads {args.heads} --seeds {seeds} "
         f"--schemes {' '.join(args.schemes)} --rope-base {args.rope_base:g} "
         f"--threads {args.threads}"
         + (f" --image-size {args.image_size}" if args.image_size else "")
         + (f" --limit-train {args.limit_train}" if args.limit_train else "")
         + (f" --num-frames {args.num_frames}" if data.video else "")
         + (f" --val-size {args.val_size}" if args.val_size != 1000 else "")
         + (f" --lr {args.lr:g} --warmup {args.warmup}" if (args.lr, args.warmup) != (3e-3, 30)
            else "") + "`"), "",
    ])
    print(text)
    update_section(args.out, heading, text)


if __name__ == "__main__":
    main()
