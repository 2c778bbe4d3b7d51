"""The main job, run by ``make demo`` and ``vqtok demo``: train, export, tokenize a held-out
photo, report.

1. Trains the default photo tokenizer config (``vqtok/configs/photos_fsq.yaml``, shipped
   with the package, so the demo runs from any directory) for a short schedule (at most 4
   minutes by default) on the photos embedded in the package.
2. Exports it to ``<run dir>/tokenizer/`` (config.json + model.safetensors).
3. Loads it with :class:`vqtok.ImageTokenizer`, encodes a held-out photo at full resolution,
   decodes it, and prints the token grid shape, the round trip's PSNR and codebook usage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vqtok.data import PHOTOS_DIR
from vqtok.formats.atomic import atomic_write
from vqtok.formats.images import DEFAULT_MAX_PIXELS, load_image
from vqtok.formats.inputs import check_regular_file
from vqtok.formats.outputs import check_new_output
from vqtok.metrics import colourfulness
from vqtok.tokenizers import ImageTokenizer
from vqtok.validation import check_positive

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "photos_fsq.yaml"
HELD_OUT_PHOTO = PHOTOS_DIR / "test" / "china.png"
PHOTO_MAX_PIXELS = DEFAULT_MAX_PIXELS
"""The largest ``--photo`` the demo round-trips, whether or not the trained model runs on
tiles: checked from the file's header before training starts."""


@dataclass
class DemoOptions:
    """What ``vqtok demo`` takes (its ``--help`` lists them)."""

    config: str = str(DEFAULT_CONFIG)
    max_steps: int = 3000
    max_minutes: float = 4.0
    photo: str = str(HELD_OUT_PHOTO)
    quiet: bool = False


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (data range 255)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _colour_line(photo: np.ndarray, reconstruction: np.ndarray) -> str:
    """The demo's colour line: how much of the photo's colourfulness the round trip kept."""
    before, after = colourfulness(photo), colourfulness(reconstruction)
    kept = f"{100 * after / before:.0f}% kept" if before > 0 else "a grey photo"
    return f"colourfulness         {after:.1f} of {before:.1f} ({kept})"


def max_time(minutes: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for a number of minutes."""
    seconds = max(1, round(minutes * 60))
    return f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def check_options(args: DemoOptions) -> Image.Image:
    """Every option checked before training starts, so a mistake costs seconds, not the
    training time: the step and time limits, the config (a regular file) and the photo (a
    readable image of at most :data:`PHOTO_MAX_PIXELS`, judged from its header). Returns
    the photo, read and in RGB. Raises ValueError (FileNotFoundError for a missing file)
    naming the option and the file."""
    steps, minutes = args.max_steps, args.max_minutes
    check_positive(**{"--max-steps": steps})
    if (isinstance(minutes, bool) or not isinstance(minutes, (int, float))
            or not math.isfinite(minutes) or minutes <= 0):
        raise ValueError(f"--max-minutes must be a positive number of minutes, got {minutes!r}")
    for option, path in (("--config", args.config), ("--photo", args.photo)):
        try:
            check_regular_file(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{option} {err}") from err
        except ValueError as err:
            raise ValueError(f"{option} {err}") from err
    try:
        return load_image(args.photo, max_pixels=PHOTO_MAX_PIXELS).convert("RGB")
    except ValueError as err:
        raise ValueError(f"--photo {err}") from err


def run_demo(args: DemoOptions) -> list[str]:
    """Check the options (:func:`check_options`), train, export, round-trip the photo;
    returns the summary lines the CLI prints."""
    photo = check_options(args)
    from vqtok.training.cli import run_dir, run_tokenizer_cli  # Lightning, only when it runs

    quiet = ["--trainer.enable_progress_bar=false"] if args.quiet else []
    cli = run_tokenizer_cli(
        [
            "fit",
            f"--config={args.config}",
            f"--trainer.max_steps={args.max_steps}",
            f"--trainer.max_time={max_time(args.max_minutes)}",
            # no validation during the short schedule; one full validation after it
            f"--trainer.val_check_interval={args.max_steps + 1}",
            "--trainer.logger.init_args.name=demo",
            "--trainer.enable_model_summary=false",
            *quiet,
        ]
    )
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    run = Path(run_dir(cli.trainer))
    tokenizer = ImageTokenizer.from_pretrained(run / "tokenizer", max_pixels=PHOTO_MAX_PIXELS)

    ids, sizes = tokenizer.encode_with_sizes(photo)
    reconstruction = tokenizer.decode(ids, sizes=sizes)[0]
    psnr = psnr_uint8(np.asarray(photo), np.asarray(reconstruction))
    side_by_side = Image.new("RGB", (photo.width * 2, photo.height))
    side_by_side.paste(photo, (0, 0))
    side_by_side.paste(reconstruction.convert("RGB"), (photo.width, 0))
    out = check_new_output(run / "demo_roundtrip.png", inputs=[Path(args.config),
                                                               Path(args.photo)])
    atomic_write(out, lambda f: side_by_side.save(f, format="PNG"))

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
        _colour_line(np.asarray(photo), np.asarray(reconstruction.convert("RGB"))),
        f"validation PSNR       {float(metrics['val/psnr']):.2f} dB on held-out crops",
        (f"codebook usage (val)  {100 * float(metrics['val/usage']):.1f}% of {k} codes, "
        f"perplexity {float(metrics['val/perplexity']):.1f}"),
        f"codes in this photo   {photo_codes} of {k}",
    ]
    return lines
