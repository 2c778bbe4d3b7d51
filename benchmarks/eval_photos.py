"""`vqtok eval` of the shipped photo tokenizers on held-out photos, with every metric
available here, on one and on two processes (benchmarks/RESULTS_eval.md).

The photos: the two of ``vqtok/data/photos/test`` and every photo of ``--eval DIR`` (none
of them a training photo). Each shipped tokenizer is measured once on one process and once
on two (Lightning DDP, gloo), as the command runs (a new process each); each ``--recipe
DIR`` (the ``out`` folder of ``benchmarks/recipe.py train``, holding ``with/`` and
``without/``) adds its two variants on one process. The JSON and wall time of each run go
into the table, with the machine's load average.

Run::

    .venv/bin/python benchmarks/eval_photos.py --eval PHOTO_DIR [--recipe runs/bench_recipe]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from recipe import kept_sections  # benchmarks/recipe.py

HAND_HEADING = "## What these runs show (written by hand)"
TOKENIZERS = ["checkpoints/photos_fsq"]
"""The shipped RGB image tokenizers (fmnist_fsq is grey Fashion-MNIST, moving_fmnist_video
a video tokenizer)."""
OUT = ROOT / "benchmarks" / "RESULTS_eval.md"


def run_eval(tokenizer: str, data: list[str], out: Path, devices: int) -> tuple[dict, float]:
    args = [str(Path(sys.executable).with_name("vqtok")), "eval", "--tokenizer", tokenizer,
            "--data", *data, "--out", str(out), "--overwrite", "--quiet",
            "--worst", "5", "--devices", str(devices)]
    if devices > 1:
        args += ["--strategy", "ddp"]
    start = time.time()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text()), time.time() - start


def num(value: float | None, spec: str) -> str:
    return "null" if value is None else f"{value:{spec}}"


def recipe_text(recipe: Path | None) -> str:
    """What the table says of the recipe variants, and how long they trained."""
    if recipe is None:
        return ("The recipe variants of `benchmarks/RESULTS_recipe.md` "
                "(`experiments/photos_vqgan.yaml` with and without the discriminator) are not "
                "in this table: their tokenizers are not shipped. `benchmarks/recipe.py "
                "train` and then this script with `--recipe` add them.")
    records = {v: json.loads((recipe / v / "steps.json").read_text())
               for v in ("without", "with")}
    w = records["with"]
    schedule = ("the schedule of `benchmarks/RESULTS_recipe.md`" if w["steps"] >= 3000 else
                "a much shorter schedule than the 3,000 steps of "
                "`benchmarks/RESULTS_recipe.md`")
    return (f"The recipe variants (`{recipe}/without|with/tokenizer`) are "
            f"`experiments/photos_vqgan.yaml` trained by `benchmarks/recipe.py train` for "
            f"{w['steps']:,} steps each (the discriminator from step {w['disc_start']:,}), "
            f"the same seed and batches, {schedule}: these rows compare the two variants with "
            f"each other (other data, crops and codebook than the shipped tokenizer).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", required=True, help="folder of held-out photos")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_eval")
    parser.add_argument("--recipe", type=Path, default=None,
                        help="benchmarks/recipe.py's out folder: evaluate its two variants")
    args = parser.parse_args()
    data = ["vqtok/data/photos/test", args.eval]
    args.work.mkdir(parents=True, exist_ok=True)
    rows, details, loads = [], [], []
    runs = [(t, (1, 2)) for t in TOKENIZERS]
    if args.recipe is not None:
        runs += [(str(args.recipe / v / "tokenizer"), (1,)) for v in ("without", "with")]
    for tokenizer, processes in runs:
        docs = {}
        for devices in processes:
            loads.append(os.getloadavg()[0])
            name = Path(tokenizer).parent.name if Path(tokenizer).name == "tokenizer" else (
                Path(tokenizer).name)
            doc, seconds = run_eval(tokenizer, data, args.work / f"{name}-{devices}.json",
                                    devices)
            loads.append(os.getloadavg()[0])
            docs[devices] = (doc, seconds)
        for devices, (d, seconds) in docs.items():
            rows.append(
                f"| {tokenizer} | {devices} | {d['images']} | {num(d['rfid'], '.3f')} | "
                f"{num(d['fd_lite0'], '.4f')} | {num(d['lpips'], '.4f')} | "
                f"{num(d['psnr'], '.3f')} | {num(d['psnr_per_image_mean'], '.3f')} | "
                f"{num(d['ssim'], '.4f')} | {d['usage']:.1%} | {d['perplexity']:.1f} | "
                f"{d['normalized_entropy']:.4f} | {d['tokens']:,} | {seconds:.0f} |")
        one = docs[1][0]
        details.append(f"- {tokenizer}, worst by PSNR (dB): " + ", ".join(
            f"{w['name']} {w['psnr']:.2f}" for w in one["worst"]) + ".")
        if 2 not in docs:
            continue
        two = docs[2][0]
        same = {k: one[k] == two[k] for k in ("images", "tokens", "dead_codes", "usage",
                                              "perplexity", "failed")}
        rel = {k: abs(one[k] - two[k]) / abs(one[k]) for k in ("fd_lite0", "psnr", "ssim")
               if one[k] is not None}
        details.append(
            f"- {tokenizer}: 1 and 2 processes agree exactly on "
            f"{', '.join(k for k, v in same.items() if v)}"
            + (f"; differ on {', '.join(k for k, v in same.items() if not v)}"
               if not all(same.values()) else "")
            + "; relative differences "
            + ", ".join(f"{k} {v:.1e}" for k, v in rel.items()) + ".")
    text = f"""# `vqtok eval` of the shipped photo tokenizers

Written by `benchmarks/eval_photos.py`. The {docs[1][0]['images']} held-out photos: the 2 of
`vqtok/data/photos/test` and the photos of the project's evaluation folder (23 photos
that no tokenizer trained on), each cropped by ADM's rule to 256 x 256 (docs/eval.md),
encoded, decoded to 8-bit pixels and compared. Every metric that needs no unavailable
weights: rFID and LPIPS are null here (the FID Inception and VGG16 weights cannot be
fetched on this machine); `fd_lite0` is the Fréchet distance in EfficientNet-Lite0's
features, **not comparable with rFID** or any published number, and from 25 images (far
fewer than its 1,280 dimensions) it ranks tokenizers on these images only.

Machine: {platform.machine()}, {os.cpu_count()} cores shared with other sessions; 1-minute
load average {min(loads):.1f} to {max(loads):.1f} during the runs. Seconds are wall time
of the whole command (start-up, Lightning, loading the networks).

| tokenizer | processes | images | rFID | FD Lite0 | LPIPS | PSNR (dB) | per-image PSNR | SSIM | usage | perplexity | norm. entropy | tokens | s |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

{chr(10).join(details)}

{recipe_text(args.recipe)}
"""
    OUT.write_text(text + kept_sections(OUT, (HAND_HEADING,)))
    print(text)


if __name__ == "__main__":
    main()
