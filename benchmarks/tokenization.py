"""Tokenizing throughput: images per second end to end from files, and the encoder's
GFLOP/s next to a large 3x3 convolution timed in the same run (the machine's practical
peak). Writes ``benchmarks/RESULTS_tokenize.md``; not part of the test suite.

Protocol. ``--images`` Fashion-MNIST test images (28 x 28, padded to 32 x 32 with black
as the tokenizer was trained) are written as PNG files to a temporary folder from the IDX
files under ``$VQTOK_DATA/fashion-mnist`` (or ``--data``), then encoded by
``vqtok.apps.files.encode_files`` (what ``vqtok encode DIR`` runs) with
``checkpoints/fmnist_fsq``: reading, decoding the PNGs, the model and writing the
``.npz``. Each configuration runs ``--repeats`` times, interleaved with the others so that
they share the machine's load; we report medians.

The encoder is timed on a batch of 64 preprocessed images, inside the same rounds as the
reference: a 3x3 convolution of 128 -> 128 channels on (8, 128, 64, 64), channels-last
and contiguous, whichever is faster. FLOPs are counted by ``torch.utils.flop_counter``
(convolutions: 2 x multiply-adds), the same way for both. The load average before and
after is recorded: this 2-core machine is shared with other jobs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vqtok.apps.files import default_workers, encode_files
from vqtok.data.fashion_mnist import pad_images
from vqtok.data.idx import read_idx
from vqtok.tokenizers import ImageTokenizer

RESULTS = Path(__file__).with_name("RESULTS_tokenize.md")
CHECKPOINT = ROOT / "checkpoints" / "fmnist_fsq"
BATCH = 64


def write_pngs(data: Path, folder: Path, n: int) -> None:
    name = "t10k-images-idx3-ubyte"
    path = data / f"{name}.gz" if (data / f"{name}.gz").exists() else data / name
    images = pad_images(read_idx(path)[:n], 32)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:05d}.png")


def median_time(fn: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def flops_of(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def assessment(peak: float, encoder: dict[str, float], end_to_end: dict[str, float],
               flops_per_image: float) -> list[str]:
    """The targets (encoder at >= 50% of the peak, >= 1,000 images/s end to end) against
    the measured rates (GFLOP/s and images/s by configuration), and the ceiling the peak
    itself sets on images per second."""
    ceiling = peak * 1e9 / flops_per_image
    return [
        "",
        "## Against the targets",
        "",
        *(f"- Encoder at batch {BATCH}, {name}: {rate / peak:.0%} of the peak "
          f"({'met' if rate >= 0.5 * peak else 'not met'}; target 50%)."
          for name, rate in encoder.items()),
        *(f"- End to end, {name}: {rate:,.0f} images/s "
          f"({'met' if rate >= 1000 else 'not met'}; target 1,000)."
          for name, rate in end_to_end.items()),
        (f"- Ceiling: at {flops_per_image / 1e6:.1f} MFLOP per image, even an encoder at "
        f"100% of the peak ({peak:.1f} GFLOP/s) encodes at most {ceiling:,.0f} images/s on "
        f"this machine, before reading a file or quantizing; 1,000 images/s would need "
        f"{1000 * flops_per_image / 1e9:.0f} GFLOP/s."),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "VQTOK_DATA", ROOT.parent / "shared" / "data")) / "fashion-mnist")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = os.getloadavg()
    tokenizer = ImageTokenizer.from_pretrained(CHECKPOINT)
    per_sample = ImageTokenizer.from_pretrained(CHECKPOINT)
    per_sample.planner.fixed_batches = False  # the per-sample kernels only
    fast = ImageTokenizer.from_pretrained(CHECKPOINT, batch_invariant=False)
    compiled = ImageTokenizer.from_pretrained(CHECKPOINT, compile=True)

    # ---- encoder at batch 64, next to the reference convolution --------------------
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.rand(1, 32, 32, generator=gen) * 2 - 1 for _ in range(BATCH)]
    batch = torch.stack(inputs)
    encoder = tokenizer.model.encoder
    enc_flops = flops_of(lambda: encoder(batch))
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).eval()
    big = torch.rand(8, 128, 64, 64, generator=gen)
    conv_flops = flops_of(lambda: conv(big))
    conv_cl = torch.nn.Conv2d(128, 128, 3, padding=1).eval().to(memory_format=torch.channels_last)
    big_cl = big.contiguous(memory_format=torch.channels_last)
    cases: dict[str, tuple[Callable[[], object], int]] = {
        "3x3 conv 128->128, (8, 128, 64, 64), contiguous": (lambda: conv(big), conv_flops),
        "3x3 conv 128->128, (8, 128, 64, 64), channels-last": (lambda: conv_cl(big_cl),
                                                               conv_flops),
        "tokenizer encode, batch 64 (fixed batches: oneDNN, channels-last)": (
            lambda: tokenizer.encode_each(inputs, BATCH), enc_flops),
        "tokenizer encode, batch 64, compile=True (inductor)": (
            lambda: compiled.encode_each(inputs, BATCH), enc_flops),
        "tokenizer encode, batch 64, per-sample kernels (the former path)": (
            lambda: per_sample.encode_each(inputs, BATCH), enc_flops),
        "tokenizer encode, batch 64, batch_invariant=False": (
            lambda: fast.encode_each(inputs, BATCH), enc_flops),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    start = time.perf_counter()
    compiled.encode_each(inputs, BATCH)  # builds the graph for 64 x 1 x 32 x 32
    compile_seconds = time.perf_counter() - start
    with torch.inference_mode():
        for fn, _ in cases.values():
            fn()  # warm-up
        for _ in range(max(5, args.repeats)):
            for name, (fn, _) in cases.items():
                times[name] += median_time(fn, 2)

    # ---- end to end from files ------------------------------------------------------
    workers = default_workers(args.images)
    ends = {f"vqtok encode DIR (default: {workers} loader workers here, fixed batches)": {},
            "vqtok encode DIR --compile": {"compile": True},
            "same as the default, workers=0 (images read in the main process)": {"workers": 0},
            "same, workers=1": {"workers": 1},
            "same, workers=2 (one per core, the former default)": {"workers": 2},
            "same, per-sample kernels and workers=0 (the former path)": {"workers": 0,
                                                                        "old": True}}
    e2e: dict[str, list[float]] = {name: [] for name in ends}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pngs"
        folder.mkdir()
        write_pngs(args.data, folder, args.images)
        for r in range(args.repeats):
            for name, options in ends.items():
                options = dict(options)
                tok = (per_sample if options.pop("old", False) else
                       compiled if options.pop("compile", False) else tokenizer)
                start = time.perf_counter()
                summary = encode_files([folder], tok, Path(tmp) / f"t{r}.npz", progress=False,
                                       overwrite=True, **options)
                e2e[name].append(time.perf_counter() - start)
                assert summary.encoded == args.images and not summary.failed
    load_after = os.getloadavg()

    # ---- report ---------------------------------------------------------------------
    rate = {name: flops / statistics.median(times[name]) / 1e9
            for name, (_, flops) in cases.items()}
    peak_name = max((n for n in cases if n.startswith("3x3")), key=rate.__getitem__)
    peak = rate[peak_name]
    lines = [
        "# Tokenizing throughput",
        "",
        (f"`python benchmarks/tokenization.py --images {args.images} --repeats {args.repeats}`, "
         f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads, {os.cpu_count()} cores "
         f"({platform.processor() or platform.machine()})."),
        (f"Load average (1, 5, 15 min) before: {', '.join(f'{v:.1f}' for v in load_before)}; "
         f"after: {', '.join(f'{v:.1f}' for v in load_after)}. The machine is shared: a "
         f"load above 2 means other jobs took part of the 2 cores during the run."),
        "",
        f"## Encoder at batch {BATCH} against the machine's practical peak",
        "",
        (f"`checkpoints/fmnist_fsq` encoder: {enc_flops / BATCH / 1e6:.1f} MFLOP per 32 x 32 "
         f"image (torch.utils.flop_counter). Peak: the faster reference convolution, "
         f"{peak:.1f} GFLOP/s. Medians of {len(times[peak_name])} runs, interleaved. "
         f"compile=True built its graph in {compile_seconds:.1f} s before the runs (once per "
         f"image size and process; inductor's disk cache shortens it after the first "
         f"process)."),
        "",
        "| case | median (ms) | GFLOP/s | of peak | images/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in cases:
        med = statistics.median(times[name])
        per_s = f"{BATCH / med:,.0f}" if not name.startswith("3x3") else ""
        lines.append(f"| {name} | {med * 1e3:.1f} | {rate[name]:.1f} | "
                     f"{rate[name] / peak:.0%} | {per_s} |")
    lines += [
        "",
        "## End to end from PNG files",
        "",
        (f"{args.images} Fashion-MNIST PNGs (32 x 32 grey) -> one `.npz`, medians of "
         f"{args.repeats} runs. The compiled runs reuse the graph built above, as one long "
         f"job over many files would."),
        "",
        "| configuration | median (s) | images/s |",
        "|---|---:|---:|",
    ]
    for name, values in e2e.items():
        med = statistics.median(values)
        lines.append(f"| {name} | {med:.2f} | {args.images / med:,.0f} |")
    encoders = {"eager": "tokenizer encode, batch 64 (fixed batches: oneDNN, channels-last)",
                "compile=True": "tokenizer encode, batch 64, compile=True (inductor)"}
    lines += assessment(
        peak, {label: rate[name] for label, name in encoders.items()},
        {name: args.images / statistics.median(e2e[name]) for name in list(e2e)[:2]},
        enc_flops / BATCH)
    text = "\n".join(lines) + "\n"
    # benchmarks/tokenize_shards.py writes its own section: keep it
    kept = args.out.read_text().partition("\n## Into shards\n") if args.out.exists() else ()
    args.out.write_text(text + ("\n## Into shards\n" + kept[2] if kept and kept[1] else ""))
    print(text)


if __name__ == "__main__":
    main()
