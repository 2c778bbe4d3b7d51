"""Images to ids with a converted VQGAN: vqtok against diffusers, in the same run. Writes
``benchmarks/RESULTS_interop.md``; not part of the test suite.

Protocol. One random-weight VQGAN f16 in taming's ImageNet layout (``ch`` 128, ``ch_mult``
[1, 1, 2, 2, 4], 2 residual blocks, attention at 16 x 16 and in the middle, ``z_channels``
256, ``embed_dim`` 256, 1,024 codes; every parameter random, norm scales and biases
included) is built by diffusers as a ``VQModel``, saved with ``save_pretrained`` and
converted with ``vqtok convert --from diffusers``. A batch of ``--batch`` random 256 x 256
images in [-1, 1] is then turned into ids by

* diffusers: ``model.quantize(model.encode(x).latents)`` indices, under ``torch.no_grad``;
* vqtok: ``ImageTokenizer.encode(x)``, by default (batch-invariant kernels: each image's ids
  independent of the batch, docs/architecture.md) and with ``batch_invariant=False``
  (torch's fastest kernels);
* with ``--compiled``, the converted model's ``encode`` through ``torch.compile`` (inductor
  with frozen weights, channels-last input), compiled before the timed runs.

Each configuration runs ``--repeats`` times, interleaved with the others so that they
share the machine's load; we report medians and the ratio of each vqtok rate to
diffusers'. Every run's ids are compared with diffusers' first run. The load average before
and after is recorded: other jobs on the machine slow the runs unevenly.

Where the time goes. Each run's minor page faults and system time are counted
(``getrusage``): every large CPU tensor glibc hands out is a fresh memory mapping whose
pages the kernel zeroes on first touch, so a configuration that allocates larger or more
tensors pays more system time for the same arithmetic. The model's floating-point
operations per image are counted once (``torch.utils.flop_counter``) and set against the
rate of one 128 -> 128 3 x 3 convolution on a 256 x 256 map measured in the same run, the
arithmetic ceiling both libraries share (they call the same oneDNN kernels). glibc's
``MALLOC_*`` environment settings are recorded: ``MALLOC_MMAP_MAX_=0`` with a large
``MALLOC_TRIM_THRESHOLD_`` keeps freed memory in the process, so no configuration pays
for fresh pages after its first run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusers import VQModel

from tests.interop.references import randomize
from vqtok.interop import convert
from vqtok.tokenizers import ImageTokenizer
from vqtok.tokenizers.runtime import compiled_indices

RESULTS = Path(__file__).with_name("RESULTS_interop.md")


def conv_rate(repeats: int = 5) -> float:
    """GFLOP/s of one 128 -> 128 3 x 3 convolution on a 256 x 256 channels-last map: the
    kernel that does most of a VQGAN encoder's arithmetic at full resolution."""
    x = torch.randn(1, 128, 256, 256).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(128, 128, 3, 3)
    with torch.inference_mode():
        torch.nn.functional.conv2d(x, weight, padding=1)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.nn.functional.conv2d(x, weight, padding=1)
    return 2 * 128 * 128 * 9 * 256 * 256 * repeats / (time.perf_counter() - start) / 1e9


def usage() -> tuple[int, float]:
    """Minor page faults and system seconds of this process so far."""
    now = resource.getrusage(resource.RUSAGE_SELF)
    return now.ru_minflt, now.ru_stime


def random_vqgan_f16(seed: int) -> VQModel:
    """taming's ImageNet f16-1024 layout as a diffusers VQModel, random in every parameter."""
    levels = 5
    model = VQModel(block_out_channels=[128, 128, 256, 256, 512],
                    down_block_types=["DownEncoderBlock2D"] * (levels - 1) + [
                        "AttnDownEncoderBlock2D"],
                    up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * (levels - 1),
                    layers_per_block=2, latent_channels=256, vq_embed_dim=256,
                    num_vq_embeddings=1024, norm_num_groups=32)
    return randomize(model, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--compiled", action="store_true",
                        help="also time the model through torch.compile (minutes to compile)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    reference = random_vqgan_f16(seed=0)
    folder = Path(tempfile.mkdtemp())
    reference.save_pretrained(folder / "vq")
    convert("diffusers", folder / "vq", folder / "tok")
    x = torch.rand(args.batch, 3, args.size, args.size,
                   generator=torch.Generator().manual_seed(1)) * 2 - 1
    grid = (args.batch, args.size // 16, args.size // 16)

    def diffusers_ids() -> torch.Tensor:
        with torch.no_grad():
            return reference.quantize(reference.encode(x).latents)[2][2].reshape(grid)

    default = ImageTokenizer.from_pretrained(folder / "tok")
    fastest = ImageTokenizer.from_pretrained(folder / "tok", batch_invariant=False)
    cases = {"diffusers encode + quantize": diffusers_ids,
             "vqtok ImageTokenizer.encode (batch-invariant, default)": lambda: default.encode(x),
             "vqtok ImageTokenizer.encode (batch_invariant=False)": lambda: fastest.encode(x)}
    compile_s = None
    if args.compiled:
        # inductor with frozen weights (oneDNN prepacks the convolution weights); the
        # tokenizer's compile option covers small images only, so the model is called here
        import torch._inductor.config as inductor

        inductor.freezing = True
        compiled = compiled_indices(fastest.model)
        x_last = x.contiguous(memory_format=torch.channels_last)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(x_last)
        compile_s = time.perf_counter() - start

        def compiled_ids() -> torch.Tensor:
            with torch.inference_mode():
                return compiled(x_last).clone()

        cases["vqtok model through torch.compile (inductor, frozen weights)"] = compiled_ids
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fastest.model.encode(x[:1])
    gflop = counter.get_total_flops() / 1e9
    times: dict[str, list[float]] = {name: [] for name in cases}
    faults: dict[str, list[int]] = {name: [] for name in cases}
    system: dict[str, list[float]] = {name: [] for name in cases}
    equal: dict[str, bool] = dict.fromkeys(cases, True)
    want = None
    for _ in range(args.repeats):
        for name, run in cases.items():
            faults_before, system_before = usage()
            start = time.perf_counter()
            ids = run()
            times[name].append(time.perf_counter() - start)
            faults_after, system_after = usage()
            faults[name].append(faults_after - faults_before)
            system[name].append(system_after - system_before)
            want = ids if want is None else want
            equal[name] &= bool(torch.equal(ids, want))
    ceiling = conv_rate()
    load_after = os.getloadavg()

    base = args.batch / statistics.median(times["diffusers encode + quantize"])
    rows = []
    for name, runs in times.items():
        rate = args.batch / statistics.median(runs)
        rows.append(f"| {name} | {statistics.median(runs):.1f} | {rate:.2f} | "
                    f"{rate / base:.2f}x | {statistics.median(faults[name]) / 1e6:.2f} | "
                    f"{statistics.median(system[name]):.1f} | {rate * gflop:.0f} | "
                    f"{'yes' if equal[name] else 'NO'} |")
    malloc = ", ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                       if k.startswith("MALLOC_")) or "none (glibc's defaults)"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([
        "# Converted VQGAN: images to ids, vqtok against diffusers",
        "",
        (f"`benchmarks/interop.py` (protocol in its docstring), {stamp}, torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads. Load average (1, 5, 15 min) before: "
        f"{', '.join(f'{v:.1f}' for v in load_before)}; after: "
        f"{', '.join(f'{v:.1f}' for v in load_after)} (a load above 2 means other jobs "
        f"shared the 2 cores). glibc malloc settings: {malloc}."),
        "",
        (f"Random-weight VQGAN f16 (taming's ImageNet layout, 1,024 codes), batch of "
        f"{args.batch} images of {args.size} x {args.size}, medians of {args.repeats} "
        f"interleaved runs; ids compared with diffusers' at every position."),
        "",
        ("| configuration | median (s) | images/s | rate vs diffusers | minor page faults "
         "(millions) | system time (s) | GFLOP/s | ids equal diffusers' |"),
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        (f"The encoder does {gflop:.1f} GFLOP per image; one 128 -> 128 3 x 3 convolution "
         f"on a 256 x 256 map ran at {ceiling:.0f} GFLOP/s in this run."),
        "",
        *([(f"The compiled model took {compile_s:.0f} s to compile (first call, not in the "
           f"medians).")] if compile_s is not None else []),
        "",
    ])
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
