"""`vqtok eval` of the shipped photo tokenizers on held-out photos, with every metric
available here, on one and on two processes (benchmarks/RESULTS_eval.md).

The photos: the two of ``vqtok/data/photos/test`` and every photo of ``--eval DIR`` (none
of them a training photo). Each tokenizer is measured once on one process and once on two
(Lightning DDP, gloo), as the command runs (a new process each), and the JSON of both and
their wall times go into the table, with the machine's load average.

Run::

    .venv/bin/python benchmarks/eval_photos.py --eval PHOTO_DIR
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", required=True, help="folder of held-out photos")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_eval")
    args = parser.parse_args()
    data = ["vqtok/data/photos/test", args.eval]
    args.work.mkdir(parents=True, exist_ok=True)
    rows, details, loads = [], [], []
    for tokenizer in TOKENIZERS:
        docs = {}
        for devices in (1, 2):
            loads.append(os.getloadavg()[0])
            doc, seconds = run_eval(tokenizer, data, args.work / f"{Path(tokenizer).name}-"
                                    f"{devices}.json", devices)
            loads.append(os.getloadavg()[0])
            docs[devices] = (doc, seconds)
        for devices, (d, seconds) in docs.items():
            rows.append(
                f"| {tokenizer} | {devices} | {d['images']} | {num(d['rfid'], '.3f')} | "
                f"{num(d['fd_lite0'], '.4f')} | {num(d['lpips'], '.4f')} | "
                f"{num(d['psnr'], '.3f')} | {num(d['psnr_per_image_mean'], '.3f')} | "
                f"{num(d['ssim'], '.4f')} | {d['usage']:.1%} | {d['perplexity']:.1f} | "
                f"{d['normalized_entropy']:.4f} | {d['tokens']:,} | {seconds:.0f} |")
        one, two = docs[1][0], docs[2][0]
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
        details.append("- worst by PSNR (dB): " + ", ".join(
            f"{w['name']} {w['psnr']:.2f}" for w in one["worst"]) + ".")
        details += [f"- note: {n}" for n in one["notes"]]
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

The recipe variants of `benchmarks/RESULTS_recipe.md` (`experiments/photos_vqgan.yaml` with
and without the discriminator) are not in this table: their tokenizers are not shipped,
and retraining them takes about 45 minutes of two cores each. `benchmarks/recipe.py train`
then `vqtok eval --tokenizer runs/bench_recipe/VARIANT/tokenizer --data ...` adds them.
"""
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
