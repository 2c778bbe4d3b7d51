"""``vqtok lm fit|validate|test`` (also spelled ``vqtok decoder ...``): the LightningCLI of
the language model on caption streams, on the base every vqtok training command shares
(:class:`vqtok.training.cli.VqtokCLI`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vqtok.lm.data import CaptionImageDataModule
from vqtok.lm.train import LMModule
from vqtok.training.cli import VqtokCLI


class _LMCLI(VqtokCLI):
    # The folder `fit` exports into keeps the name its runs have always used.
    export_name = "decoder"

    def export(self, out: Path) -> None:
        self.model.export(out, self.datamodule)  # the data knows the token grid and captions

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        # One position scheme for model and streams; the vocabulary follows the tokenizer.
        parser.link_arguments("model.config.position_scheme", "data.position_scheme")
        parser.link_arguments("data.image_codebook_size", "model.image_codebook_size",
                              apply_on="instantiate")
        parser.link_arguments("data.vocab_size", "model.config.vocab_size",
                              apply_on="instantiate")


def run_lm_cli(argv: Sequence[str]) -> VqtokCLI:
    """``vqtok lm fit|validate|test``: the language model on caption streams; returns the
    CLI (trainer, model)."""
    return _LMCLI(LMModule, CaptionImageDataModule, argv,
                  "Train, validate or test a vqtok language model on caption + image "
                  "token streams.")
