"""The main job, run by ``make demo``: train, export, tokenize a held-out photo, report.

1. Trains the default photo tokenizer config (``experiments/photos_fsq.yaml``) for a short
   schedule (at most 4 minutes by default) on the photos embedded in the package.
2. Exports it to ``<run dir>/tokenizer/`` (config.json + model.safetensors).
3. Loads it with :class:`vqtok.ImageTokenizer`, encodes a held-out photo at full resolution,
   decodes it, and prints the token grid shape, the round trip's PSNR and codebook usage.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_CONFIG = "experiments/photos_fsq.yaml"
HELD_OUT_PHOTO = Path(__file__).parent / "data" / "photos" / "test" / "china.png"


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (data range 255)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def max_time(minutes: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for a number of minutes."""
    seconds = max(1, round(minutes * 60))
    return f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, on the ``vqtok demo`` subcommand."""
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="training config (YAML)")
    parser.add_argument("--max-steps", type=int, default=3000, help="at most this many steps")
    parser.add_argument("--max-minutes", type=float, default=4.0,
                        help="and at most this much training time (the schedule is short)")
    parser.add_argument("--photo", default=str(HELD_OUT_PHOTO), help="held-out photo to round-trip")


def run_demo(args: argparse.Namespace) -> list[str]:
    """Train, export, round-trip the photo; returns the summary lines the CLI prints."""
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"config {args.config} not found; run from the repository root")

    from vqtok.cli import run_dir, run_lightning
    from vqtok.tokenizer import ImageTokenizer

    cli = run_lightning(
        [
            "fit",
            f"--config={args.config}",
            f"--trainer.max_steps={args.max_steps}",
            f"--trainer.max_time={max_time(args.max_minutes)}",
            # no validation during the short schedule; one full validation after it
            f"--trainer.val_check_interval={args.max_steps + 1}",
            "--trainer.logger.init_args.name=demo",
            "--trainer.enable_model_summary=false",
        ]
    )
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    run = Path(run_dir(cli.trainer))
    tokenizer = ImageTokenizer.from_pretrained(run / "tokenizer")

    photo = Image.open(args.photo).convert("RGB")
    ids, sizes = tokenizer.encode_with_sizes(photo)
    reconstruction = tokenizer.decode(ids, sizes=sizes)[0]
    psnr = psnr_uint8(np.asarray(photo), np.asarray(reconstruction))
    side_by_side = Image.new("RGB", (photo.width * 2, photo.height))
    side_by_side.paste(photo, (0, 0))
    side_by_side.paste(reconstruction.convert("RGB"), (photo.width, 0))
    side_by_side.save(run / "demo_roundtrip.png")

    metrics = cli.trainer.callback_metrics
    k = tokenizer.codebook_size
    photo_codes = int(np.unique(ids.numpy()).size)
    lines = [
        f"run directory         {run}",
        (f"training              {cli.trainer.global_step} steps in at most "
        f"{args.max_minutes:g} minutes"),
        (f"tokenizer             {run / 'tokenizer'} ({k} codes, "
        f"{tokenizer.downsample_factor}x downsampling)"),
        f"held-out photo        {Path(args.photo).name} {photo.width}x{photo.height}",
        f"token grid            {tuple(ids.shape[1:])} = {ids[0].numel()} tokens",
        f"round-trip PSNR       {psnr:.2f} dB  (side by side: {run / 'demo_roundtrip.png'})",
        f"validation PSNR       {float(metrics['val/psnr']):.2f} dB on held-out crops",
        (f"codebook usage (val)  {100 * float(metrics['val/usage']):.1f}% of {k} codes, "
        f"perplexity {float(metrics['val/perplexity']):.1f}"),
        f"codes in this photo   {photo_codes} of {k}",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m vqtok.demo [options]``: the same as ``vqtok demo [options]``."""
    from vqtok.cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
