"""Where the colour of the photo tokenizer goes: an ablation of the training data on
held-out photos, with the colourfulness measure beside PSNR and SSIM.

``train --variant NAME`` trains ``experiments/photos_fsq.yaml`` (seed 0, batch 16 of
32 x 32 crops) with one change of :data:`VARIANTS` and exports the tokenizer at the steps
of ``--export-at`` (and at the end). ``score`` round-trips the held-out photos at full
resolution through exported tokenizers and caches the numbers in each export's
``scores.json``; ``report`` prints the table of those caches (for
``benchmarks/RESULTS_colour.md``): PSNR and SSIM (torchmetrics, [0, 1] pixels) and the kept colour, the colourfulness
(:func:`vqtok.metrics.colourfulness`) of the reconstruction over that of the original,
averaged over the photos. ``compare --old DIR --new DIR`` adds the same numbers per photo
for two tokenizer directories (the shipped checkpoint before and after a retrain). ``hues PHOTO...`` counts each photo's
pixels by hue band (which colours the training photos hold against the held-out ones).

The held-out photos are the two in ``vqtok/data/photos/test`` and, given ``--eval DIR``,
every photo of that folder (never a training photo). Variants are compared at equal step
counts, not equal minutes: several run at once on a shared machine.

Run::

    .venv/bin/python benchmarks/colour.py train --variant base --steps 3000 --export-at 1000 &
    .venv/bin/python benchmarks/colour.py train --variant colour_only --steps 3000 --export-at 1000 &
    wait; .venv/bin/python benchmarks/colour.py score runs/bench_colour/*/step* --eval PHOTO_DIR
    .venv/bin/python benchmarks/colour.py report --eval PHOTO_DIR
"""

from __future__ import annotations

import argparse
import json
import os
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
from vqtok.metrics import colourfulness
from vqtok.tokenizers import ImageTokenizer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "photos_fsq.yaml"
DEFAULT_OUT = Path("runs") / "bench_colour"
MAX_PIXELS = 2**21

VARIANTS: dict[str, list[str]] = {
    "base": [],
    "grey_quarter": ["--data.init_args.grey_weight=0.25"],
    "colour_only": ["--data.init_args.grey_weight=0"],
    "augment": ["--data.init_args.colour_augment=true"],
    "colour_only_augment": ["--data.init_args.grey_weight=0",
                            "--data.init_args.colour_augment=true"],
    "colour_weight_1": ["--model.reconstruction.init_args.colour_weight=1"],
    "colour_weight_3": ["--model.reconstruction.init_args.colour_weight=3"],
    "weight_ema": ["--ema=vqtok.training.callbacks.WeightEMA", "--ema.init_args.decay=0.999"],
    "fsq_4375": ["--model.quantizer.init_args.levels=[7, 5, 5, 5, 5]"],
    "fsq_15360": ["--model.quantizer.init_args.levels=[8, 8, 8, 6, 5]"],
    "cosine": ["--model.optimizer.min_lr_ratio=0.05"],
    "fsq_4375_cosine": ["--model.quantizer.init_args.levels=[7, 5, 5, 5, 5]",
                        "--model.optimizer.min_lr_ratio=0.05"],
}
DESCRIPTION = {
    "base": "the config as it was: all 15 training photos alike (8 of them grey)",
    "grey_quarter": "grey photos drawn a quarter as often as colour ones",
    "colour_only": "only the 7 colour photos (`grey_weight: 0`)",
    "augment": "all 15 photos, colour crops with random channel order and saturation "
               "x[0.75, 1.5] (`colour_augment: true`)",
    "colour_only_augment": "both: only colour photos, augmented",
    "colour_weight_1": "grey photos a quarter as often, the chroma error counted twice "
                       "(`colour_weight: 1`)",
    "colour_weight_3": "grey photos a quarter as often, the chroma error counted four times "
                       "(`colour_weight: 3`)",
    "weight_ema": "grey photos a quarter as often, the exported weights a moving average "
                  "(`WeightEMA`, decay 0.999)",
    "fsq_4375": "grey photos a quarter as often, FSQ levels [7, 5, 5, 5, 5] (4,375 codes, "
                "5 channels a token) in place of [8, 5, 5, 5]",
    "fsq_15360": "grey photos a quarter as often, FSQ levels [8, 8, 8, 6, 5] (15,360 codes)",
    "cosine": "grey photos a quarter as often, the learning rate down half a cosine to 5% "
              "of its peak at the run's last step (`min_lr_ratio: 0.05`)",
    "fsq_4375_cosine": "both: FSQ levels [7, 5, 5, 5, 5] and the cosine to 5%",
}


class ExportAt(pl.Callback):
    """Exports the tokenizer to ``<out>/step<N>`` after each step N of ``steps``, and
    samples the 1-minute load average every 100 steps."""

    def __init__(self, out: Path, steps: list[int]) -> None:
        self.out, self.steps, self.load = out, set(steps), []

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule,
                           *args: object) -> None:
        if trainer.global_step % 100 == 0:
            self.load.append(os.getloadavg()[0])
        if trainer.global_step in self.steps:
            module.export(self.out / f"step{trainer.global_step}")


def train(variant: str, steps: int, export_at: list[int], out: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    run_out = out / variant
    callback = ExportAt(run_out, [s for s in export_at if s < steps])
    from vqtok.training import cli as cli_module
    from vqtok.training.module import TokenizerModule

    class _ExportingCLI(cli_module._TokenizerCLI):
        def instantiate_trainer(self, **kwargs: object) -> pl.Trainer:
            trainer = super().instantiate_trainer(**kwargs)
            trainer.callbacks.append(callback)
            return trainer

    start = time.time()
    run = _ExportingCLI(TokenizerModule, pl.LightningDataModule, [
        "fit", f"--config={CONFIG}", f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps}", *VARIANTS[variant],
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.logger.init_args.name={variant}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--export_dir={run_out / f'step{steps}'}",
        "--overwrite=true",
    ], "benchmark run", subclass_mode_data=True)
    record = {"variant": variant, "steps": run.trainer.global_step, "threads": threads,
              "wall_s": time.time() - start, "load_1min": callback.load}
    (run_out / "run.json").write_text(json.dumps(record))


def evaluate(tokenizer: ImageTokenizer, photos: list[Path]) -> dict[str, dict[str, float]]:
    """PSNR, SSIM, and the colourfulness of original and reconstruction, per photo."""
    rows = {}
    for path in photos:
        photo = Image.open(path).convert("RGB")
        ids, sizes = tokenizer.encode_with_sizes(photo)
        a = np.array(photo)
        b = np.array(tokenizer.decode(ids, sizes=sizes)[0].convert("RGB"))
        ta, tb = (torch.from_numpy(v).permute(2, 0, 1)[None].double() / 255.0 for v in (a, b))
        rows[path.name] = {
            "psnr": float(peak_signal_noise_ratio(tb, ta, data_range=1.0)),
            "ssim": float(structural_similarity_index_measure(tb, ta, data_range=1.0)),
            "colour": colourfulness(a), "colour_recon": colourfulness(b)}
    return rows


def summary(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    """Means over photos; the kept colour is averaged over photos with colour (> 1)."""
    kept = [r["colour_recon"] / r["colour"] for r in rows.values() if r["colour"] > 1.0]
    return {"psnr": statistics.mean(r["psnr"] for r in rows.values()),
            "ssim": statistics.mean(r["ssim"] for r in rows.values()),
            "kept": statistics.mean(kept)}


def photo_sets(eval_dir: Path | None) -> dict[str, list[Path]]:
    sets = {"test": sorted((PHOTOS_DIR / "test").glob("*.png"))}
    if eval_dir is not None:
        sets["eval"] = sorted(p for p in eval_dir.iterdir() if p.suffix.lower() in
                              (".png", ".jpg", ".jpeg"))
    return sets


def score(export: Path, eval_dir: Path | None) -> dict[str, dict[str, dict[str, float]]]:
    """The per-photo numbers of one exported tokenizer, cached in ``<export>/scores.json``
    (several ``score`` commands may run at once; ``report`` reads their caches)."""
    cache = export / "scores.json"
    scores = json.loads(cache.read_text()) if cache.is_file() else {}
    missing = {n: p for n, p in photo_sets(eval_dir).items() if n not in scores}
    if missing:
        tok = ImageTokenizer.from_pretrained(export, max_pixels=MAX_PIXELS)
        scores.update({name: evaluate(tok, photos) for name, photos in missing.items()})
        cache.write_text(json.dumps(scores))
    return scores


def report(out: Path, eval_dir: Path | None) -> str:
    sets = photo_sets(eval_dir)
    lines, loads = [], []
    for variant in VARIANTS:
        folder = out / variant
        if (folder / "run.json").is_file():
            loads += json.loads((folder / "run.json").read_text())["load_1min"]
        exports = sorted((d for d in folder.glob("step*") if d.is_dir()),
                         key=lambda d: int(d.name[4:]))
        for export in exports:  # scored by `score` beforehand; the report only reads
            cache = export / "scores.json"
            if not cache.is_file():
                continue
            scores = json.loads(cache.read_text())
            cells = []
            china = None
            for name in sets:
                if name not in scores:
                    cells.append("- | - | -")
                    continue
                rows = scores[name]
                s = summary(rows)
                cells.append(f"{s['psnr']:.2f} | {s['ssim']:.3f} | {100 * s['kept']:.0f}%")
                if name == "test":
                    c = rows["china.png"]
                    china = f"{c['psnr']:.2f} | {100 * c['colour_recon'] / c['colour']:.0f}%"
            lines.append(f"| {variant} | {export.name[4:]} | {china} | " + " | ".join(cells) + " |")
    heads = " | ".join(f"{n} PSNR | {n} SSIM | {n} kept colour" for n in sets)
    table = "\n".join([f"| variant | step | china PSNR | china kept colour | {heads} |",
                       "|---" * (4 + 3 * len(sets)) + "|", *lines])
    variants = "\n".join(f"- `{v}`: {d}" for v, d in DESCRIPTION.items())
    load = f"{min(loads):.1f} to {max(loads):.1f}" if loads else "not recorded"
    counts = ", ".join(f"{n}: {len(p)} photos" for n, p in sets.items())
    return (f"Variants of `experiments/photos_fsq.yaml` (seed 0, 4x downsampling, FSQ "
            f"[8, 5, 5, 5]):\n\n{variants}\n\nHeld-out photos at full resolution ({counts}); "
            f"`test` is china.png and flower.png. Kept colour: colourfulness of the "
            f"reconstruction over the original's, mean over the photos. The runs shared "
            f"{os.cpu_count()} cores with other jobs (1-minute load average {load}).\n\n"
            f"{table}\n")


def compare(old: Path, new: Path, eval_dir: Path | None) -> str:
    sets = photo_sets(eval_dir)
    photos = [p for ps in sets.values() for p in ps]
    results = {name: evaluate(ImageTokenizer.from_pretrained(d, max_pixels=MAX_PIXELS), photos)
               for name, d in (("old", old), ("new", new))}
    rows = []
    for p in photos:
        o, n = results["old"][p.name], results["new"][p.name]
        rows.append(f"| {p.name} | {o['colour']:.1f} | {o['psnr']:.2f} | {n['psnr']:.2f} | "
                    f"{o['colour_recon']:.1f} | {n['colour_recon']:.1f} |")
    means = []
    for name, ps in sets.items():
        so, sn = (summary({p.name: results[k][p.name] for p in ps}) for k in ("old", "new"))
        means.append(f"| mean of {name} ({len(ps)}) | | {so['psnr']:.2f} | {sn['psnr']:.2f} | "
                     f"{100 * so['kept']:.0f}% kept | {100 * sn['kept']:.0f}% kept |")
    return ("| photo | colourfulness | PSNR old | PSNR new | colourfulness old | "
            "colourfulness new |\n|---|---|---|---|---|---|\n" + "\n".join(rows + means) + "\n")


HUES = {"warm": ((0, 75), (265, 360)), "green": ((75, 165),), "blue": ((165, 265),)}
"""Hue bands in degrees: reds, oranges, yellows and purples; greens; cyans and blues."""


def hues(photos: list[Path]) -> str:
    """The share of each photo's pixels with a colour (HSV saturation over 0.2, value over
    0.15) and the share in each band of :data:`HUES`: which colours the photos hold."""
    rows = []
    for path in photos:
        hsv = np.asarray(Image.open(path).convert("RGB").convert("HSV"), dtype=np.float64)
        hue, sat, val = hsv[..., 0] * 360 / 255, hsv[..., 1] / 255, hsv[..., 2] / 255
        coloured = (sat > 0.2) & (val > 0.15)
        bands = [coloured & np.logical_or.reduce([(hue >= lo) & (hue < hi) for lo, hi in b])
                 for b in HUES.values()]
        rows.append(f"| {path.name} | {100 * coloured.mean():.1f}% | "
                    + " | ".join(f"{100 * b.mean():.1f}%" for b in bands) + " |")
    return (f"| photo | coloured | {' | '.join(HUES)} |\n|---" + "|---" * (1 + len(HUES))
            + "|\n" + "\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--variant", choices=list(VARIANTS), required=True)
    t.add_argument("--steps", type=int, default=2500)
    t.add_argument("--export-at", type=int, nargs="*", default=[1000])
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--out", type=Path, default=DEFAULT_OUT)
    r = sub.add_parser("report")
    r.add_argument("--out", type=Path, default=DEFAULT_OUT)
    r.add_argument("--eval", type=Path, default=None, help="folder of held-out photos")
    e = sub.add_parser("score")
    e.add_argument("exports", type=Path, nargs="+", help="exported tokenizer folders")
    e.add_argument("--eval", type=Path, default=None, help="folder of held-out photos")
    c = sub.add_parser("compare")
    c.add_argument("--old", type=Path, required=True)
    c.add_argument("--new", type=Path, required=True)
    c.add_argument("--eval", type=Path, default=None, help="folder of held-out photos")
    h = sub.add_parser("hues")
    h.add_argument("photos", type=Path, nargs="+")
    args = parser.parse_args()
    if args.command == "train":
        train(args.variant, args.steps, args.export_at, args.out, args.threads)
    elif args.command == "score":
        for export in args.exports:
            score(export, args.eval)
    elif args.command == "hues":
        print(hues(args.photos))
    elif args.command == "report":
        print(report(args.out, args.eval))
    else:
        print(compare(args.old, args.new, args.eval))


if __name__ == "__main__":
    main()
