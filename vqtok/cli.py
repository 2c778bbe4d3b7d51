"""The ``vqtok`` command.

``vqtok fit|validate|test --config experiments/NAME.yaml`` is a LightningCLI over
:class:`~vqtok.training.module.TokenizerModule` and any LightningDataModule; at the end of
``fit`` the tokenizer is exported to ``<run dir>/tokenizer/``. The plain subcommands
(``encode``, ``decode``, ``export``) work on exported tokenizers and checkpoints;
``report`` writes codebook-collapse reports (:mod:`vqtok.report`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")
log = logging.getLogger("vqtok")


# ---- LightningCLI ---------------------------------------------------------------------


def run_lightning(argv: Sequence[str]) -> object:
    """Run a LightningCLI subcommand; returns the CLI object (its trainer and model)."""
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    from vqtok.training.callbacks import CodebookHistory
    from vqtok.training.module import TokenizerModule

    class TokenizerCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--export_dir",
                default=None,
                help="Where `fit` exports the trained tokenizer (default: <run dir>/tokenizer).",
            )
            # On by default: codebook usage history into the run directory for `vqtok
            # report`; `--codebook_history null` (or `codebook_history: null`) turns it off.
            parser.add_lightning_class_args(
                CodebookHistory, "codebook_history", subclass_mode=True, required=False
            )
            parser.set_defaults({"codebook_history": {
                "class_path": f"{CodebookHistory.__module__}.{CodebookHistory.__qualname__}",
                "init_args": {"every_n_steps": 50},
            }})

        def instantiate_trainer(self, **kwargs: object) -> pl.Trainer:
            trainer = super().instantiate_trainer(**kwargs)
            trainer.callbacks = [c for c in trainer.callbacks if c is not None]  # null: off
            return trainer

        def after_fit(self) -> None:
            if not self.trainer.is_global_zero:
                return
            config = self.config[self.config.subcommand]
            out = config.get("export_dir") or Path(run_dir(self.trainer)) / "tokenizer"
            export_model(self.model, out)
            log.info("tokenizer exported to %s", out)

    return TokenizerCLI(
        TokenizerModule,
        pl.LightningDataModule,
        subclass_mode_data=True,
        args=list(argv),
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"default_root_dir": "runs"},
        parser_kwargs={"description": "Train, validate or test a vqtok image tokenizer."},
    )


def run_dir(trainer: object) -> str:
    """The run directory: the logger's version folder, else the trainer's root dir."""
    return trainer.log_dir or trainer.default_root_dir  # type: ignore[attr-defined]


def export_model(module: object, out_dir: str | Path) -> Path:
    """Write a trained TokenizerModule's autoencoder as a tokenizer directory."""
    from vqtok.io import save_tokenizer_dir

    return save_tokenizer_dir(module.model, out_dir)  # type: ignore[attr-defined]


# ---- plain subcommands ----------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from vqtok.training.checkpoint import load_tokenizer_module

    module = load_tokenizer_module(args.checkpoint)
    out = export_model(module, args.out_dir)
    print(f"exported {args.checkpoint} -> {out}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from vqtok.tokenize_files import encode_files
    from vqtok.tokenizer import ImageTokenizer

    tokenizer = ImageTokenizer.from_pretrained(args.tokenizer, device=args.device)
    summary = encode_files(
        args.images, tokenizer, args.out, batch_size=args.batch_size, progress=not args.quiet
    )
    print(summary)
    # The good files' ids are saved either way; a non-zero status tells scripts some failed.
    return 1 if summary.failed else 0


def cmd_decode(args: argparse.Namespace) -> int:
    from vqtok.tokenize_files import decode_file
    from vqtok.tokenizer import ImageTokenizer

    tokenizer = ImageTokenizer.from_pretrained(args.tokenizer, device=args.device)
    written = decode_file(args.tokens, tokenizer, args.out)
    print(f"wrote {len(written)} images to {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from vqtok.report import build_report

    html, json_path = build_report(
        args.run_dirs, args.out, tokenizers=args.tokenizer, data=args.data,
        same_codebook=args.same_codebook, image_size=args.image_size,
        max_images=args.max_images, samples=args.samples, device=args.device,
    )
    print(f"wrote {html} and {json_path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from vqtok.multimodal.commands import write_generated

    print(write_generated(args))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vqtok.demo import run_demo

    print("\n".join(["", "vqtok demo", *run_demo(args)]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqtok", description="Train image tokenizers and turn images into tokens and back."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in LIGHTNING_SUBCOMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (see `vqtok {name} --help`)", add_help=False)

    sub.add_parser("decoder", add_help=False, help="LightningCLI fit/validate/test of the "
                   "multimodal decoder (see `vqtok decoder fit --help`)")
    from vqtok.multimodal.commands import add_generate_parser

    add_generate_parser(sub).set_defaults(func=cmd_generate)
    from vqtok.demo import add_demo_arguments

    p = sub.add_parser("demo", help="train the default photo tokenizer briefly, export it and "
                       "round-trip a held-out photo (what `make demo` runs)")
    add_demo_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="export a training checkpoint as a tokenizer directory")
    p.add_argument("checkpoint", help="a .ckpt written by `vqtok fit`")
    p.add_argument("out_dir", help="tokenizer directory to write (replaced atomically)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("encode", help="encode images to token ids (.npz)")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--tokenizer", required=True, help="an exported tokenizer directory")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode token ids (.npz from `vqtok encode`) to PNG images")
    p.add_argument("tokens", help="an .npz written by `vqtok encode`")
    p.add_argument("--tokenizer", required=True, help="the tokenizer that encoded them")
    p.add_argument("--out", required=True, help="output folder for the PNGs")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("report", help="codebook-collapse report (HTML + report.json) of "
                       "training runs, or of exported tokenizers measured on data")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                   help="run directories with a codebook history (written by `vqtok fit`)")
    p.add_argument("--out", default="report.html",
                   help="HTML file to write; report.json is written beside it")
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
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        run_lightning(argv)
        return 0
    if argv and argv[0] == "decoder" and len(argv) > 1 and argv[1] in LIGHTNING_SUBCOMMANDS:
        from vqtok.multimodal.commands import run_decoder_lightning

        run_decoder_lightning(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"vqtok {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
