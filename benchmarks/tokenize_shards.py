"""Tokenizing into a sharded token dataset: what the sharded writer costs next to the
encoder, and the peak memory against the number of images. Writes (or replaces) the
section "Into shards" of ``benchmarks/RESULTS_tokenize.md``; not part of the test suite.

Protocol, for each of two data sets, ``--repeats`` rounds in which every case runs once
(interleaved, so that they share the machine's load; medians reported):

- Fashion-MNIST: ``--images`` test images padded to 32 x 32, as PNG files, through
  ``checkpoints/fmnist_fsq`` (8 x 8 tokens);
- photos: ``--photos`` random 256 x 256 crops of the photos under
  ``$VQTOK_DATA/photos`` (and the embedded ones), as PNG files, through
  ``checkpoints/photos_fsq`` (64 x 64 tokens).

Cases: *encoder alone*, the tokenizer's ``encode`` on the images already decoded in
memory (the rate no file pipeline can beat); *into shards*, ``encode_shards`` (what
``vqtok encode DIR --out D --shard-size 1000`` runs) from the PNG files; *into .npz*,
``encode_files`` from the same files (the same reading, one ``.npz``). The writer's own
cost is measured directly too: the shard writer (``shard_bytes`` and the atomic write)
timed on the rows of a finished run, per image, as a fraction of the encoder's time per
image.

Memory: ``vqtok encode`` into shards of 1,000 in a child process, for the first 6,000 and
all 60,000 Fashion-MNIST training images; the child reports its own peak resident set
(VmHWM) at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import PEAK_RSS_SOURCE
from vqtok.apps.files import encode_files
from vqtok.apps.shards import encode_shards
from vqtok.data import PHOTOS_DIR
from vqtok.data.fashion_mnist import pad_images
from vqtok.data.idx import read_idx
from vqtok.formats import token_shards as fmt
from vqtok.tokenizers import ImageTokenizer

RESULTS = Path(__file__).with_name("RESULTS_tokenize.md")
SECTION = "## Into shards"
DATA = Path(os.environ.get("VQTOK_DATA", ROOT.parent / "shared" / "data"))


def fmnist(split: str, n: int) -> np.ndarray:
    name = "t10k-images-idx3-ubyte" if split == "test" else "train-images-idx3-ubyte"
    folder = DATA / "fashion-mnist"
    path = folder / f"{name}.gz" if (folder / f"{name}.gz").exists() else folder / name
    return pad_images(read_idx(path)[:n], 32)


def photo_crops(n: int, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    files = sorted((DATA / "photos").rglob("*.png")) + sorted(PHOTOS_DIR.rglob("*.png"))
    photos = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    photos = [p for p in photos if min(p.shape[:2]) >= size]
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        p = photos[rng.integers(len(photos))]
        top, left = rng.integers(p.shape[0] - size + 1), rng.integers(p.shape[1] - size + 1)
        crops.append(np.ascontiguousarray(p[top:top + size, left:left + size]))
    return crops


def write_pngs(images: list[np.ndarray] | np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:05d}.png")


def rates(name: str, images: list[np.ndarray] | np.ndarray, checkpoint: Path, repeats: int,
          tmp: Path) -> dict[str, float]:
    """Images/s of each case (module doc), medians of ``repeats`` interleaved rounds, and
    the writer's share of the encoder's time per image."""
    tokenizer = ImageTokenizer.from_pretrained(checkpoint)
    folder = tmp / name
    write_pngs(images, folder)
    pixels = [tokenizer.pixels(image) for image in images]
    inputs = [tokenizer.normalization.to_model(x) for x in pixels]
    n = len(inputs)
    times: dict[str, list[float]] = {"encoder alone": [], "into shards": [], "into .npz": []}
    tokenizer.encode_each(inputs[:64], 64)  # warm-up
    for r in range(repeats):
        start = time.perf_counter()
        tokenizer.encode_each(inputs, 64)
        times["encoder alone"].append(time.perf_counter() - start)
        out = tmp / f"{name}-shards-{r}"
        start = time.perf_counter()
        summary = encode_shards([folder], tokenizer, checkpoint, out, 1000, progress=False)
        times["into shards"].append(time.perf_counter() - start)
        assert summary.encoded == n and not summary.failed
        start = time.perf_counter()
        encode_files([folder], tokenizer, tmp / f"{name}-{r}.npz", progress=False)
        times["into .npz"].append(time.perf_counter() - start)
        if r:
            shutil.rmtree(out)
    # the writer alone, on the rows of the first run
    out = tmp / f"{name}-shards-0"
    manifest = fmt.read_manifest(out)
    shards = [fmt.read_shard(out / e["file"]) for e in manifest["shards"]]
    metas = [fmt.read_shard_meta(out / e["file"]) for e in manifest["shards"]]
    dtype = fmt.id_dtype(tokenizer.codebook_size)
    writer = []
    for _ in range(repeats):
        target = tmp / f"{name}-rewrite"
        start = time.perf_counter()
        for rows, meta in zip(shards, metas):
            fmt.write_shard(target, rows, meta, dtype)
        writer.append(time.perf_counter() - start)
        shutil.rmtree(target)
    result = {case: n / statistics.median(t) for case, t in times.items()}
    result["writer share"] = statistics.median(writer) / statistics.median(
        times["encoder alone"])
    return result


MEMORY_CHILD = PEAK_RSS_SOURCE + r"""
import sys
from vqtok.cli import main
assert main(["encode", sys.argv[1], "--tokenizer", sys.argv[2], "--out", sys.argv[3],
             "--shard-size", "1000", "--quiet"]) == 0
print(peak_rss_bytes())
"""


def peak_memory(count: int, tmp: Path, images: np.ndarray) -> int:
    """The peak RSS (bytes) of a child encoding the first ``count`` images into shards."""
    folder = tmp / f"train-{count}"
    write_pngs(images[:count], folder)
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(folder),
                           str(ROOT / "checkpoints" / "fmnist_fsq"), str(tmp / f"m-{count}")],
                          cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    shutil.rmtree(folder)
    return int(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--photos", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", type=int, nargs=2, default=(6000, 60000),
                        metavar=("SMALL", "LARGE"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        found = {
            "Fashion-MNIST 32 x 32": rates("fmnist", fmnist("test", args.images),
                                           ROOT / "checkpoints" / "fmnist_fsq", args.repeats,
                                           Path(tmp)),
            "photos 256 x 256": rates("photos", photo_crops(args.photos),
                                      ROOT / "checkpoints" / "photos_fsq", args.repeats,
                                      Path(tmp)),
        }
        train = fmnist("train", max(args.memory))
        peaks = {n: peak_memory(n, Path(tmp), train) for n in args.memory}
    load_after = os.getloadavg()

    small, large = args.memory
    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}"
    lines = [
        SECTION,
        "",
        (f"`python benchmarks/tokenize_shards.py --images {args.images} --photos "
         f"{args.photos} --repeats {args.repeats}`, {stamp} UTC; torch {torch.__version__}, {torch.get_num_threads()} threads, "
         f"{os.cpu_count()} cores. Load average (1, 5, 15 min) before: "
         f"{', '.join(f'{v:.1f}' for v in load_before)}; after: "
         f"{', '.join(f'{v:.1f}' for v in load_after)} (a load above 2: other jobs shared "
         f"the cores). Medians of {args.repeats} interleaved rounds; shards of 1,000 images."),
        "",
        ("| images | encoder alone (images/s) | into shards, end to end | into .npz, end to "
        "end | shards / encoder alone | shards / .npz | shard writer's time / encoder's |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in found.items():
        lines.append(f"| {name} | {r['encoder alone']:,.0f} | {r['into shards']:,.0f} | "
                     f"{r['into .npz']:,.0f} | {r['into shards'] / r['encoder alone']:.0%} | "
                     f"{r['into shards'] / r['into .npz']:.0%} | {r['writer share']:.1%} |")
    lines += [
        "",
        (f"Peak memory of `vqtok encode DIR --out D --shard-size 1000` (the child's VmHWM): "
         f"{small:,} Fashion-MNIST training images {peaks[small] / 2**20:,.0f} MiB, "
         f"{large:,} images {peaks[large] / 2**20:,.0f} MiB "
         f"({peaks[large] / peaks[small] - 1:+.1%}; target: within 10%)."),
        "",
        ("Target: the sharded writer costs at most 10% of the encoder-alone rate "
        "(last column). End to end, reading and decoding the PNG files costs more than the "
        "writer: compare the .npz path, which reads the same files."),
    ]
    text = args.out.read_text() if args.out.exists() else ""
    pattern = re.compile(rf"{re.escape(SECTION)}\n.*?(?=\n## |\Z)", re.DOTALL)
    body = "\n".join(lines) + "\n"
    text = pattern.sub(body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body
    args.out.write_text(text)
    print(body)


if __name__ == "__main__":
    main()
