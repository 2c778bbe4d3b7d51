"""Round trip of held-out Moving Fashion-MNIST clips through a video tokenizer: PSNR per
frame, codes used, the first frame's ids against the one-frame (image) path, and time per
clip. Writes the round-trip section of ``benchmarks/RESULTS_video.md``; not a test.

Protocol. ``--clips`` clips of the *test* split (sprites from the 10,000 Fashion-MNIST
test images, never in a training clip) with ``--seed`` (default 1: not the validation
clips of the training run, which are seed 0), 17 frames of 64 x 64, are encoded with
``VideoTokenizer.encode`` and decoded with ``VideoTokenizer.decode``. PSNR is computed in
float64 numpy per clip and frame over all pixels (data range 255), then averaged over
clips for each frame index; the "all" column is the mean over clips of the PSNR of the
whole clip. The load average before and after is recorded: this 2-core machine is shared.

Run: ``.venv/bin/python benchmarks/video_tokenizer.py --tokenizer checkpoints/moving_fmnist_video``
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vqtok.data import MovingFashionMNIST
from vqtok.tokenizers import VideoTokenizer

RESULTS = Path(__file__).with_name("RESULTS_video.md")
BEGIN, END = "<!-- round-trip:begin -->", "<!-- round-trip:end -->"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def measure(tokenizer: VideoTokenizer, clips: int, seed: int) -> dict:
    data = MovingFashionMNIST(split="test", num_clips=clips, seed=seed)
    per_frame, whole, codes, times = [], [], set(), []
    first_equal = 0
    for i in range(clips):
        clip = data[i][0].numpy()[..., None]  # (17, 64, 64, 1) uint8
        start = time.perf_counter()
        ids = tokenizer.encode(clip)
        back = tokenizer.decode(ids)
        times.append(time.perf_counter() - start)
        assert ids.shape == (5, 8, 8) and back.shape == clip.shape, (ids.shape, back.shape)
        per_frame.append([psnr(back[t], clip[t]) for t in range(clip.shape[0])])
        whole.append(psnr(back, clip))
        codes.update(ids.reshape(-1).tolist())
        first_equal += int(torch.equal(ids[0], tokenizer.encode_image(clip[0])))
    return {"per_frame": np.mean(per_frame, axis=0), "whole": float(np.mean(whole)),
            "codes": len(codes), "first_equal": first_equal, "clips": clips, "seed": seed,
            "seconds": float(np.median(times))}


def section(result: dict, tokenizer_dir: str, load: tuple[float, float], threads: int) -> str:
    frames = result["per_frame"]
    head = "| " + " | ".join(str(t) for t in range(len(frames))) + " | all |"
    rule = "|" + "---:|" * (len(frames) + 1)
    row = "| " + " | ".join(f"{v:.2f}" for v in frames) + f" | {result['whole']:.2f} |"
    return "\n".join([
        BEGIN,
        (f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC with "
         f"`{tokenizer_dir}` on {result['clips']} held-out clips (test split, seed "
         f"{result['seed']}), {threads} torch thread(s), load average {load[0]:.1f} before "
         f"and {load[1]:.1f} after (2 cores)."),
        "",
        "PSNR (dB) per frame index, mean over clips:",
        "",
        head, rule, row,
        "",
        (f"- ids per clip: 5 x 8 x 8 = 320, shapes exact for every clip; {result['codes']} "
         f"distinct codes used over all clips."),
        (f"- first latent frame equal to `encode_image(first frame)`: {result['first_equal']} "
         f"of {result['clips']} clips."),
        f"- encode + decode: {result['seconds']:.2f} s per clip (median).",
        END,
    ])


def write(text: str) -> None:
    old = RESULTS.read_text() if RESULTS.exists() else "# Video tokenizer results\n\n"
    if BEGIN in old:
        before, rest = old.split(BEGIN, 1)
        old = before + text + rest.split(END, 1)[1]
    else:
        old = old.rstrip("\n") + "\n\n## Round trip of held-out clips\n\n" + text + "\n"
    RESULTS.write_text(old)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default=str(ROOT / "checkpoints" / "moving_fmnist_video"))
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--print-only", action="store_true", help="do not write the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    result = measure(VideoTokenizer.from_pretrained(args.tokenizer), args.clips, args.seed)
    text = section(result, os.path.relpath(args.tokenizer, ROOT), (load_before,
                                                                   os.getloadavg()[0]),
                   args.threads)
    print(text)
    if not args.print_only:
        write(text)
