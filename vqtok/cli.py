"""The ``vqtok`` command.

``vqtok fit|validate|test --config experiments/NAME.yaml`` is a LightningCLI over
:class:`~vqtok.training.module.TokenizerModule` and any LightningDataModule; at the end of
``fit`` the tokenizer is exported to ``<run dir>/tokenizer/``. The plain subcommands
(``encode``, ``decode``, ``export``) work on exported tokenizers and checkpoints.
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

    from vqtok.training.module import TokenizerModule

    class TokenizerCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse)
            parser.add_argument(
                "--export_dir",
                default=None,
                help="Where `fit` exports the trained tokenizer (default: <run dir>/tokenizer).",
            )

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqtok", description="Train image tokenizers and turn images into tokens and back."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in LIGHTNING_SUBCOMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (see `vqtok {name} --help`)", add_help=False)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        run_lightning(argv)
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
