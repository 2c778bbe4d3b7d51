"""The ``vqtok`` command: every subcommand's arguments, wired to the library.

``vqtok fit|validate|test --config experiments/NAME.yaml`` and ``vqtok lm
fit|validate|test`` (the language model; ``vqtok decoder ...`` is the same command) are
LightningCLIs (:mod:`vqtok.training.cli`, :mod:`vqtok.lm.cli`); the plain subcommands
(``encode``, ``decode``, ``export``, ``convert``, ``eval``, ``generate``, ``report``,
``data``, ``demo``, ``lpips convert``) parse their arguments here and run in
:mod:`vqtok.commands`, which imports what each needs when it runs, so ``vqtok encode`` never
loads Lightning. Errors a user can fix are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from vqtok.apps import Stopped
from vqtok.commands import (
    Done,
    cmd_convert,
    cmd_data,
    cmd_decode,
    cmd_demo,
    cmd_encode,
    cmd_eval,
    cmd_export,
    cmd_generate,
    cmd_lpips_convert,
    cmd_report,
)
from vqtok.version import vqtok_version

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")
LM_COMMANDS = ("lm", "decoder")
"""``vqtok lm fit|validate|test``; ``decoder`` is the name it had first."""
log = logging.getLogger("vqtok")


# ---- logging ---------------------------------------------------------------------------


class _DropTips(logging.Filter):
    """Lightning's advertisements for its cloud products are not vqtok's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def configure_logging(quiet: bool = False) -> None:
    """vqtok's messages once each, on stderr; Lightning keeps its own handler (so its
    lines are not printed twice), minus its tips. ``quiet``: warnings and errors only."""
    if not any(getattr(h, "_vqtok", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._vqtok = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    for name in ("lightning.pytorch", "lightning.fabric"):
        lightning_log = logging.getLogger(name)
        if quiet:
            lightning_log.setLevel(logging.WARNING)
        if not any(isinstance(f, _DropTips) for f in lightning_log.filters):
            lightning_log.addFilter(_DropTips())
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        rank_zero = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
            rank_zero.addFilter(_DropTips())


# ---- the parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqtok", description="Train image tokenizers and turn images into tokens and back.")
    parser.add_argument("--version", action="version", version=f"vqtok {vqtok_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in LIGHTNING_SUBCOMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (see `vqtok {name} --help`)",
                       add_help=False)
    sub.add_parser("lm", aliases=["decoder"], add_help=False, help="LightningCLI "
                   "fit/validate/test of the text-to-image language model (see `vqtok lm fit "
                   "--help`; `vqtok decoder` is the same command)")

    p = sub.add_parser("demo", help="train the default photo tokenizer briefly, export it and "
                       "round-trip a held-out photo (what `make demo` runs)")
    from vqtok.apps.demo import DemoOptions  # no Lightning: that is imported when it runs

    demo = DemoOptions()
    p.add_argument("--config", default=demo.config,
                   help="training config (YAML; default: the photo config shipped with vqtok)")
    p.add_argument("--max-steps", type=int, default=demo.max_steps,
                   help="at most this many steps")
    p.add_argument("--max-minutes", type=float, default=demo.max_minutes,
                   help="and at most this much training time (the schedule is short)")
    p.add_argument("--photo", default=demo.photo, help="held-out photo to round-trip")
    p.add_argument("--quiet", action="store_true", help="no progress bars or Lightning info")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="export a training checkpoint as a tokenizer directory, "
                       "or a tokenizer as ONNX (--onnx)")
    p.add_argument("checkpoint", help="a .ckpt written by `vqtok fit`; with --onnx also a "
                   "tokenizer directory or Hugging Face Hub repo id")
    p.add_argument("out_dir", help="tokenizer directory to write (atomically); with --onnx "
                   "the folder for encoder.onnx and decoder.onnx")
    p.add_argument("--onnx", action="store_true", help="write encoder.onnx (pixels -> ids) and "
                   "decoder.onnx (ids -> pixels) with dynamic batch and size (the onnx extra)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("encode", help="encode images (or clips, with a video tokenizer) to "
                       "token ids (.npz)")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively); "
                   "with --shard-size also webdataset tars (*.tar); with a video tokenizer: "
                   "animated GIFs, frame folders, or folders of them")
    _tokenizer_io(p, "an exported tokenizer directory", "output .npz")
    p.add_argument("--workers", type=int, default=None,
                   help="processes that read images while the model runs (default: one per "
                        "CPU core beyond the first two, at most 4, none for 64 files or "
                        "fewer; 0: read here)")
    p.add_argument("--compile", action="store_true",
                   help="run the encoder on small images through torch.compile: 1.5 to 2x "
                        "faster on the CPU after a few seconds of compiling per image size, "
                        "so for thousands of images (needs a C++ compiler; without one it "
                        "warns and runs as usual)")
    _shard_options(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode token ids (.npz from `vqtok encode`) to PNG images "
                       "(animated GIFs with a video tokenizer)")
    p.add_argument("tokens", help="an .npz written by `vqtok encode`")
    _tokenizer_io(p, "the tokenizer that encoded them", "output folder for the PNGs (or GIFs); "
                  "with a video tokenizer also a .gif file for a single clip")
    p.add_argument("--frame-ms", type=int, default=100,
                   help="with a video tokenizer: each GIF frame's duration in ms (default 100)")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser(
        "generate", help="generate images (or, with --video, animated GIFs) from a text prompt "
                         "with a trained language model",
        description=cmd_generate.__doc__)
    p.add_argument("--lm", "--decoder", dest="lm", required=True,
                   help="a language model directory (`vqtok lm fit`); --decoder is the same")
    p.add_argument("--tokenizer", required=True, help="the tokenizer the LM was trained on")
    p.add_argument("--prompt", required=True,
                   help="a class name such as 'ankle boot' (put into the LM's caption "
                        "template) or a whole caption")
    p.add_argument("--out", required=True,
                   help="output PNG (a GIF with --video); with --num N > 1, OUT_000.png ... "
                        "are written")
    p.add_argument("--num", type=int, default=1, help="images to generate (default 1)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy (default 1)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest codes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true",
                   help="feed the prompt as is, without the caption template")
    p.add_argument("--video", action="store_true",
                   help="write animated GIFs (an LM trained on clips, a video tokenizer)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames per GIF with --video: 1 + k x the tokenizer's temporal factor "
                        "(default: the length of the LM's training clips)")
    p.add_argument("--frame-ms", type=int, default=100,
                   help="display time of each GIF frame in milliseconds (default 100)")
    _device_and_overwrite(p, "replace existing output files")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("report", help="codebook-collapse report (HTML + JSON) of "
                       "training runs, or of exported tokenizers measured on data")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                   help="run directories with a codebook history (written by `vqtok fit`)")
    p.add_argument("--out", default="report.html",
                   help="HTML file to write; the JSON is written beside it with the same "
                        "name (report.html -> report.json)")
    p.add_argument("--tokenizer", action="append", default=[], metavar="DIR",
                   help="an exported tokenizer to measure on --data (repeatable)")
    p.add_argument("--data", default=None, help="image folder or DataModule config YAML: what "
                   "--tokenizer is measured on and the images every run reconstructs "
                   "(default: each run's own validation data, from the config.yaml in its "
                   "run directory; failing that, the embedded held-out photos)")
    p.add_argument("--image-size", type=int, default=64, help="side of photo/folder crops")
    p.add_argument("--max-images", type=int, default=None, help="measure on at most N images")
    p.add_argument("--samples", type=int, default=6, help="images reconstructed per run")
    p.add_argument("--same-codebook", action="store_true",
                   help="refuse runs whose codebook sizes differ")
    _device_and_overwrite(p, "replace an existing page and JSON")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "eval", help="measure a tokenizer's reconstructions as papers report them: rFID, "
                     "LPIPS, PSNR, SSIM, codebook usage (docs/eval.md)",
        description=cmd_eval.__doc__)
    p.add_argument("--tokenizer", required=True,
                   help="a tokenizer directory or Hugging Face Hub repo id")
    p.add_argument("--data", required=True, nargs="+",
                   help="an image folder (recursive), image files, a .txt list of image "
                        "paths (one a line, relative to the list), or a DataModule config "
                        "(.yaml), whose validation images are measured")
    p.add_argument("--size", type=int, default=256,
                   help="side of the square crop (default 256, the ImageNet 256 x 256 "
                        "protocol); smaller images are skipped and listed")
    p.add_argument("--out", default="eval.json", help="the JSON to write (default eval.json)")
    for flag, what in EVAL_WEIGHTS.items():
        p.add_argument(flag, default=None, metavar="FILE", help=what)
    p.add_argument("--reference-stats", default=None, metavar="NPZ",
                   help="compare with these Inception statistics (mu, sigma) instead of the "
                        "originals' own")
    p.add_argument("--save-stats", default=None, metavar="NPZ",
                   help="also write the originals' Inception statistics (mu, sigma)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default 16)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that read images (default 0: read in the main process)")
    p.add_argument("--devices", type=int, default=1,
                   help="processes (or GPUs) to measure on (default 1)")
    p.add_argument("--accelerator", default="cpu", help="cpu or gpu (default cpu)")
    p.add_argument("--strategy", default="auto",
                   help="Lightning strategy; with --devices > 1 use ddp (gloo on the CPU)")
    p.add_argument("--worst", type=int, default=5, help="worst images by PSNR to list")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("lpips", help="make the LPIPS weights file (perceptual loss) from the "
                       "published VGG16 and LPIPS weights",
                       description="LPIPS (docs/training.md#lpips). vqtok never downloads its "
                                   "weights: you bring the two published files.")
    lpips_sub = p.add_subparsers(dest="lpips_command", metavar="COMMAND", required=True)
    p = lpips_sub.add_parser(
        "convert", help="write one safetensors file from a torchvision VGG16 state dict and "
        "the lpips package's VGG heads",
        description=cmd_lpips_convert.__doc__)
    p.add_argument("--vgg", required=True, metavar="VGG16.pth",
                   help="torchvision-format VGG16 state dict (features.* used, classifier.* "
                        "ignored)")
    p.add_argument("--heads", required=True, metavar="LIN.pth",
                   help="the lpips package's VGG heads (lin0.model.1.weight ... "
                        "lin4.model.1.weight)")
    p.add_argument("--out", required=True, help="safetensors file to write (atomically)")
    p.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                   help="replace an existing --out")
    p.set_defaults(func=cmd_lpips_convert)

    p = sub.add_parser("convert", help="convert a diffusers VQModel, a taming VQGAN or a "
                       "LlamaGen tokenizer into a tokenizer directory (docs/interop.md)",
                       description=cmd_convert.__doc__)
    p.add_argument("--from", dest="source_kind", required=True,
                   choices=["diffusers", "taming", "llamagen", "seed-voken"],
                   help="the source's project")
    p.add_argument("source", help="diffusers: a VQModel folder or Hub repo id; taming: a log "
                   "folder (configs/model.yaml, ckpts/last.ckpt); llamagen: the .pt file; "
                   "seed-voken: an Open-MAGVIT2 or IBQ .ckpt")
    p.add_argument("out", help="tokenizer directory to write (atomically)")
    p.add_argument("--arch", default=None, help="llamagen: VQ-8 or VQ-16 (default: from the "
                   "weights' shapes)")
    p.add_argument("--subfolder", default=None,
                   help="diffusers: the folder of the VQModel in SOURCE (e.g. vqvae)")
    p.add_argument("--revision", default=None, help="diffusers Hub repo: branch, tag or commit")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("data", help="fetch a data set into the user cache ($VQTOK_DATA, else "
                       "the platform cache directory)",
                       description=cmd_data.__doc__)
    p.add_argument("dataset", choices=["fashion-mnist", "inception"],
                   help="the data set, or `inception`: the FID Inception weights that "
                        "`vqtok eval` measures rFID with (docs/eval.md)")
    p.add_argument("--from", dest="source", default=None, metavar="DIR",
                   help="copy the four IDX files (gzipped or not) from this folder instead of "
                        "downloading them; for inception: the weights file")
    p.add_argument("--root", default=None,
                   help="where to put them (default: the cache's fashion-mnist/ folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data)
    return parser


def _shard_options(p: argparse.ArgumentParser) -> None:
    """``vqtok encode``'s sharded output and its processes (docs/formats.md#token-shards)."""
    p.add_argument("--shard-size", type=int, default=None, metavar="N",
                   help="write a sharded token dataset into the folder --out: Parquet shards "
                        "of N inputs each and a manifest; a rerun continues an interrupted "
                        "one. Inputs may then include webdataset tars (images with optional "
                        ".txt/.json captions)")
    p.add_argument("--devices", default=None,
                   help="with --shard-size: processes per machine, as for `vqtok fit` "
                        "(Lightning Fabric; e.g. 2, or 'auto')")
    p.add_argument("--num-nodes", type=int, default=1, help="with --shard-size: machines")
    p.add_argument("--strategy", default=None, help="with --shard-size: Lightning strategy "
                   "(ddp; default auto)")
    p.add_argument("--accelerator", default="auto", help="with --devices: cpu, gpu or auto")


def _tokenizer_io(p: argparse.ArgumentParser, tokenizer: str, out: str) -> None:
    """The options ``encode`` and ``decode`` share."""
    from vqtok.formats.images import DEFAULT_MAX_PIXELS, TILED_MAX_PIXELS
    from vqtok.tokenizers.tiling import DEFAULT_TILE_SIZE

    p.add_argument("--tokenizer", required=True, help=tokenizer)
    p.add_argument("--out", required=True, help=out)
    p.add_argument("--batch-size", type=int, default=16,
                   help="images per forward pass (default 16; encode runs small images in fixed "
                        "batches of up to 64 that depend on their size alone)")
    p.add_argument("--max-pixels", type=_positive_or_word, default="auto",
                   help=f"the largest image, in pixels (default 'auto': {TILED_MAX_PIXELS:,} "
                        f"for a model that runs on tiles, else {DEFAULT_MAX_PIXELS:,}, as a "
                        f"whole image's memory grows with it; 'none': no limit)")
    p.add_argument("--tile-size", type=_positive_or_word, default="auto",
                   help=f"run images with a side over N pixels on N x N tiles, with the same "
                        f"result and the memory of one tile (default 'auto': "
                        f"{DEFAULT_TILE_SIZE} when the model allows it; 'none': never)")
    _device_and_overwrite(p, "replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _device_and_overwrite(p: argparse.ArgumentParser, overwrite: str) -> None:
    """The options of every command that runs a model and writes files."""
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--overwrite", action="store_true", help=overwrite)


def _positive_or_word(text: str) -> int | str | None:
    """A positive count (``1,000`` and ``1_000`` too), ``none`` or ``auto``."""
    if text.strip().lower() in ("none", "auto"):
        return None if text.strip().lower() == "none" else "auto"
    value = int(text.replace(",", "").replace("_", ""))
    if value < 1:
        raise ValueError(text)
    return value


EVAL_WEIGHTS = {
    "--inception": "FID Inception weights (weights-inception-2015-12-05-6726825d.pth or "
                   "pt_inception-2015-12-05-6726825d.pth; default: the one `vqtok data "
                   "inception` cached; without it rFID is null)",
    "--lpips": "LPIPS weights made by `vqtok lpips convert` (default: "
               "$VQTOK_DATA/weights/lpips-vgg16.safetensors if there; without it LPIPS is "
               "null)",
    "--lite0": "EfficientNet-Lite0 weights for fd_lite0, a Fréchet distance NOT comparable "
               "with rFID (default: those of the `lite0` extra, efficientnet-lite0-pytorch-"
               "model, if installed)",
}
"""The weights files of ``vqtok eval``: each optional, each makes one metric."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    configure_logging(quiet="--quiet" in argv)
    lightning = argv[:1] and argv[0] in LIGHTNING_SUBCOMMANDS or argv[:1] and (
        argv[0] in LM_COMMANDS and len(argv) > 1 and argv[1] in LIGHTNING_SUBCOMMANDS)
    two_words = argv[:1] and argv[0] in (*LM_COMMANDS, "lpips")
    command = " ".join(argv[:2] if two_words else argv[:1]) or "vqtok"
    try:
        if lightning:
            return _lightning(argv)
        args = build_parser().parse_args(argv)
        func: Callable[[argparse.Namespace], Done] = args.func
        done = func(args)
        if done.text:
            print(done.text)
        return done.status
    except KeyboardInterrupt:
        print(f"vqtok {command}: interrupted", file=sys.stderr)
        return 130
    except Stopped as stop:
        print(f"vqtok {command}: {stop}", file=sys.stderr)
        return stop.status
    except Exception as err:  # one line for the user; --debug shows the traceback
        if debug:
            raise
        from vqtok.extras import MissingExtraError

        known = isinstance(err, (ValueError, FileNotFoundError, MissingExtraError))
        kind = "" if known else f"{type(err).__name__}: "
        print(f"vqtok {command}: error: {kind}{_first_line(err)}", file=sys.stderr)
        return 2 if known else 1


def _lightning(argv: list[str]) -> int:
    """A LightningCLI subcommand. An interrupted run (SIGTERM, as a scheduler sends it)
    stops after its last checkpoint is saved, and :func:`main` exits with 143."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    lm = argv[0] in LM_COMMANDS
    try:
        if lm:
            from vqtok.lm.cli import run_lm_cli

            run_lm_cli(argv[1:])
        else:
            from vqtok.training.cli import run_tokenizer_cli

            run_tokenizer_cli(argv)
    except SIGTERMException:
        raise Stopped("stopped by SIGTERM; resume with --ckpt_path "
                      "<run dir>/checkpoints/last.ckpt") from None
    return 0


def _first_line(err: BaseException) -> str:
    """The message to show: jsonargparse wraps an error raised while it builds a class
    (a DataModule whose data is missing, say) in a message of its own, so its cause
    speaks for it."""
    while err.__cause__ is not None and _raised_in(err, "jsonargparse"):
        err = err.__cause__
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _raised_in(err: BaseException, package: str) -> bool:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith(package)


if __name__ == "__main__":
    sys.exit(main())
