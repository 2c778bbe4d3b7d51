"""The photos recipe with and without its patch discriminator, on the same seed, steps and
batches: what the adversarial term buys on held-out photos.

``train --variant with|without`` trains ``experiments/photos_vqgan.yaml`` (``without``:
``discriminator: null``, everything else equal), exports the tokenizer, and writes the
seconds of every training step to ``<out>/<variant>/steps.json``. The two variants may run
at the same time (one thread each), so both see the same machine load.

``report`` loads both exported tokenizers, round-trips the held-out photos at full
resolution and writes ``benchmarks/RESULTS_recipe.md``: PSNR and SSIM (torchmetrics, on
[0, 1] pixels), the sharpness ratio (variance of the Laplacian of the reconstruction's
luminance over that of the original; 1.0 is as sharp as the input), codebook usage on the
held-out photos' tokens, and the median seconds per step; and a side-by-side PNG of a
held-out photo (original | without | with) beside it. What the numbers say is added by
hand below the generated part.

Run (about 30 minutes here for 800 steps each)::

    .venv/bin/python benchmarks/recipe.py train --variant without --steps 800 &
    .venv/bin/python benchmarks/recipe.py train --variant with --steps 800
    wait; .venv/bin/python benchmarks/recipe.py report
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from vqtok.data import PHOTOS_DIR
from vqtok.metrics import usage_stats
from vqtok.tokenizers import ImageTokenizer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "photos_vqgan.yaml"
DEFAULT_OUT = Path("runs") / "bench_recipe"
RESULTS = ROOT / "benchmarks" / "RESULTS_recipe.md"
PICTURE = ROOT / "benchmarks" / "recipe_side_by_side.png"
VARIANTS = ("without", "with")
LPIPS_HEADING = "## LPIPS cost and correctness"  # written by benchmarks/lpips_cost.py
HAND_HEADING = "## What this run shows (written by hand)"
EVAL_HEADING = "## A perceptual measure: `vqtok eval` (added by hand)"  # from RESULTS_eval.md


class StepTimer(pl.Callback):
    """Wall seconds of each training batch (forward, backward, every optimizer step)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.load: list[float] = []

    def on_train_batch_start(self, *args: object) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        if len(self.seconds) % 50 == 1:
            self.load.append(os.getloadavg()[0])


def train(variant: str, steps: int, disc_start: int, out: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    timer = StepTimer()
    start = time.time()
    # The timer is an object of this script, not a class a config can name: it is added
    # to the trainer the tokenizer CLI builds.
    from vqtok.training import cli as cli_module

    class _TimedCLI(cli_module._TokenizerCLI):
        def instantiate_trainer(self, **kwargs: object) -> pl.Trainer:
            trainer = super().instantiate_trainer(**kwargs)
            trainer.callbacks.append(timer)
            return trainer

    from vqtok.training.module import TokenizerModule

    run = _TimedCLI(TokenizerModule, pl.LightningDataModule, [
        "fit", f"--config={CONFIG}", f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps}",
        *([f"--model.adversarial.init_args.start={disc_start}"] if variant == "with"
          else ["--model.adversarial=null"]),
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.logger.init_args.name={variant}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--export_dir={out / variant / 'tokenizer'}",
        "--overwrite=true",
    ], "benchmark run", subclass_mode_data=True)
    record = {
        "variant": variant, "steps": run.trainer.global_step, "disc_start": disc_start,
        "threads": threads, "wall_s": time.time() - start, "step_s": timer.seconds,
        "load_1min": timer.load, "val_psnr": float(run.trainer.callback_metrics["val/psnr"]),
        "val_usage": float(run.trainer.callback_metrics["val/usage"]),
    }
    (out / variant / "steps.json").write_text(json.dumps(record))


def luminance(image: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB uint8 image, in [0, 1], float64."""
    rgb = image.astype(np.float64) / 255.0
    return rgb @ np.array([0.299, 0.587, 0.114])


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian over the interior pixels."""
    lap = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
           - 4.0 * grey[1:-1, 1:-1])
    return float(lap.var())


def evaluate(tokenizer: ImageTokenizer, photos: list[Path]) -> tuple[dict, list[Image.Image]]:
    psnrs, ssims, sharp, ids_all, recons = [], [], [], [], []
    for path in photos:
        photo = Image.open(path).convert("RGB")
        ids, sizes = tokenizer.encode_with_sizes(photo)
        recon = tokenizer.decode(ids, sizes=sizes)[0].convert("RGB")
        a, b = np.array(photo), np.array(recon)
        ta, tb = (torch.from_numpy(v).permute(2, 0, 1)[None].double() / 255.0 for v in (a, b))
        psnrs.append(float(peak_signal_noise_ratio(tb, ta, data_range=1.0)))
        ssims.append(float(structural_similarity_index_measure(tb, ta, data_range=1.0)))
        sharp.append(laplacian_variance(luminance(b)) / laplacian_variance(luminance(a)))
        ids_all.append(ids.flatten())
        recons.append(recon)
    counts = torch.bincount(torch.cat(ids_all), minlength=tokenizer.codebook_size)
    stats = usage_stats(counts.double())
    return {"psnr": statistics.mean(psnrs), "ssim": statistics.mean(ssims),
            "sharpness": statistics.mean(sharp), "usage": float(stats["usage"]),
            "perplexity": float(stats["perplexity"]), "tokens": int(counts.sum()),
            "per_photo": {p.name: {"psnr": x, "ssim": y, "sharpness": z}
                          for p, x, y, z in zip(photos, psnrs, ssims, sharp)}}, recons


def report(out: Path) -> None:
    photos = sorted((PHOTOS_DIR / "test").glob("*.png"))
    records = {v: json.loads((out / v / "steps.json").read_text()) for v in VARIANTS}
    results, recons = {}, {}
    for v in VARIANTS:
        tok = ImageTokenizer.from_pretrained(out / v / "tokenizer")
        results[v], recons[v] = evaluate(tok, photos)
        results[v]["codebook_size"] = tok.codebook_size
    # side by side: original | without | with, of the first held-out photo
    photo = Image.open(photos[0]).convert("RGB")
    strip = Image.new("RGB", (photo.width * 3, photo.height))
    for i, im in enumerate([photo, recons["without"][0], recons["with"][0]]):
        strip.paste(im, (i * photo.width, 0))
    strip.save(PICTURE)

    start = records["with"]["disc_start"]
    def step_s(v: str) -> float:  # median over the steps where the discriminator is on
        return statistics.median(records[v]["step_s"][start:])

    rows = []
    for v in VARIANTS:
        r, rec = results[v], records[v]
        rows.append(f"| {v} discriminator | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                    f"{r['sharpness']:.3f} | {100 * r['usage']:.1f}% ({r['perplexity']:.0f}) | "
                    f"{step_s(v):.3f} | {rec['wall_s'] / 60:.1f} |")
    loads = [x for v in VARIANTS for x in records[v]["load_1min"]]
    per_photo = "\n".join(
        f"| {name} | " + " | ".join(
            f"{results[v]['per_photo'][name][k]:.{3 if k != 'psnr' else 2}f}"
            for v in VARIANTS for k in ("psnr", "ssim", "sharpness")) + " |"
        for name in results["with"]["per_photo"])
    text = f"""# The photos recipe with and without the patch discriminator

`benchmarks/recipe.py` trains `experiments/photos_vqgan.yaml` twice with the same seed,
steps and batches: once as written (patch discriminator, hinge loss, VQGAN's adaptive weight,
Esser et al. 2021 eq. 7) and once with `discriminator: null`. Both keep the weight EMA
(decay 0.999, warmed up) and export it. Each variant ran {records['with']['steps']} steps (batch 16 of
64 x 64 crops); the discriminator was on from step {start}. The two ran at the same time,
one thread each, on {platform.machine()} ({os.cpu_count()} cores, shared with other
sessions and a long background experiment): 1-minute load average {min(loads):.1f} to
{max(loads):.1f} while they ran.

Measured on the {len(photos)} held-out photos ({", ".join(p.name for p in photos)}) at full
resolution through `ImageTokenizer` (tiled): PSNR (dB) and SSIM on [0, 1] pixels
(torchmetrics), the sharpness ratio (variance of the Laplacian of the reconstruction's
luminance over the original's; 1.0 is as sharp as the input), codebook usage over the
{results['with']['tokens']} tokens of those photos (of {results['with']['codebook_size']}
codes; perplexity in brackets), median seconds per training step over steps {start} to the
end, and each run's wall time.

| variant | PSNR | SSIM | sharpness | usage (perplexity) | s/step | minutes |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Per photo (PSNR, SSIM, sharpness; without, then with):

| photo | PSNR | SSIM | sharp. | PSNR | SSIM | sharp. |
|---|---|---|---|---|---|---|
{per_photo}

![original, without, with](recipe_side_by_side.png)

`recipe_side_by_side.png`: {photos[0].name}, original | without | with the discriminator.

LPIPS is not in this table: the real VGG16 weights cannot be had on this machine (see the LPIPS section below, measured with random weights for cost and correctness).
"""
    RESULTS.write_text(text + kept_sections(RESULTS))
    print(text)


KEPT_HEADINGS = (HAND_HEADING, LPIPS_HEADING, EVAL_HEADING)


def kept_sections(path: Path, headings: tuple[str, ...] = KEPT_HEADINGS) -> str:
    """The sections of ``path`` that other scripts write (``## `` headings in
    ``headings``, each up to the next ``## ``), to be kept when this report is rewritten."""
    if not path.exists():
        return ""
    kept, keep = [], False
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith("## "):
            keep = line.strip() in headings
        if keep:
            kept.append(line)
    return ("\n" + "".join(kept)) if kept else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--variant", choices=VARIANTS, required=True)
    t.add_argument("--steps", type=int, default=800)
    t.add_argument("--disc-start", type=int, default=250)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--out", type=Path, default=DEFAULT_OUT)
    r = sub.add_parser("report")
    r.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.command == "train":
        train(args.variant, args.steps, args.disc_start, args.out, args.threads)
    else:
        report(args.out)


if __name__ == "__main__":
    main()
