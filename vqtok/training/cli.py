"""The one LightningCLI base of ``vqtok fit|validate|test`` and ``vqtok lm ...``.

:class:`VqtokCLI` adds what both share: runs under ``runs/`` by default, the config saved
beside each run, ``--export_dir``, and at the end of ``fit`` an export of the trained model
(``module.export(out_dir)``; the language model's also reads its DataModule) into
``<run dir>/<export_name>``. The two commands differ only in the classes they train, a few
links between config keys and the export: :func:`run_tokenizer_cli` here and
:func:`vqtok.lm.cli.run_lm_cli`.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from vqtok.formats.outputs import is_within
from vqtok.training.callbacks import CodebookHistory, RunCheckpoint, WeightEMA
from vqtok.training.checkpoint import (
    RunCheckpointIO,
    flat_options,
    nest_optimizer_options,
    read_run_checkpoint,
)
from vqtok.training.module import TokenizerModule

log = logging.getLogger("vqtok")

# Lightning warns when a program passes `args` while sys.argv holds its own arguments,
# which is how `vqtok` calls it; and Lightning 2.6 calls a torch pytree API that torch
# 2.13 deprecates. Neither is something a vqtok user can act on, so a process that runs a
# vqtok CLI does not show them; nor torchdata's loader calling a torch API that torch
# deprecates.
_THIRD_PARTY_NOISE = (
    "LightningCLI's args parameter is intended",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    "'set_vital' is deprecated",
)


def run_dir(trainer: pl.Trainer) -> str:
    """The run directory: the logger's version folder, else the trainer's root dir. Under
    several processes ``trainer.log_dir`` is a collective, so every rank must ask."""
    return trainer.log_dir or trainer.default_root_dir


class VqtokCLI(LightningCLI):
    """LightningCLI with vqtok's run directory and export (module doc)."""

    export_name = "model"
    """The folder of the run directory that ``fit`` exports into."""

    def __init__(self, model_class: type[pl.LightningModule],
                 datamodule_class: type[pl.LightningDataModule], argv: Sequence[str],
                 description: str, **kwargs: Any) -> None:
        for message in _THIRD_PARTY_NOISE:
            warnings.filterwarnings("ignore", message=message)
        super().__init__(
            model_class, datamodule_class, args=list(argv),
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"default_root_dir": "runs"},
            parser_kwargs={"description": description}, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--export_dir", default=None,
            help=f"Where `fit` exports the trained {self.export_name} "
                 f"(default: <run dir>/{self.export_name}).")
        parser.add_argument(
            "--overwrite", type=bool, default=False,
            help="Let `fit` write into a run directory or an --export_dir that already "
                 "holds files (resuming a run with --ckpt_path needs no --overwrite).")
        # On by default: last.ckpt every N steps, at the end and on SIGTERM/Ctrl-C, so an
        # interrupted run can resume; `--checkpoint null` leaves Lightning's default.
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint", subclass_mode=True,
                                        required=False)
        parser.set_defaults({"checkpoint": {
            "class_path": f"{RunCheckpoint.__module__}.{RunCheckpoint.__qualname__}",
            "init_args": {"every_n_train_steps": 100},
        }})

    def parse_arguments(self, parser: Any, args: Any) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI reads --ckpt_path next (for its hyper-parameters): an empty or
        # truncated file is named in one line here rather than failing inside torch.load.
        ckpt = self.config.get(self.config.get("subcommand") or "", {}).get("ckpt_path")
        if ckpt is not None and Path(ckpt).is_file():
            self.check_checkpoint(ckpt, read_run_checkpoint(ckpt, mmap=True))

    def check_checkpoint(self, path: str, checkpoint: dict[str, Any]) -> None:
        """Refuse, in one line, a ``--ckpt_path`` this command cannot resume."""

    def before_instantiate_classes(self) -> None:
        config = self.config[self.config.subcommand]
        if config.get("trainer", {}).get("enable_checkpointing") is False:
            config["checkpoint"] = None  # Lightning refuses a checkpoint callback then
        if self.config.subcommand == "fit":
            _continue_in_own_run(config)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks = [c for c in trainer.callbacks if c is not None]  # `null`: off
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own
            trainer.strategy.checkpoint_io = RunCheckpointIO()
        return trainer

    def before_fit(self) -> None:
        """Refuse, before anything is written, to train into another run's directory or to
        export over files that exist (unless ``--overwrite``, or resuming that run)."""
        config = self.config[self.config.subcommand]
        run = Path(run_dir(self.trainer))  # every rank asks: a collective under DDP
        ckpt = config.get("ckpt_path")
        resuming_here = ckpt is not None and is_within(Path(ckpt), run)
        if resuming_here:
            # Continuing in its own folder: Lightning's warnings that the folder holds files
            # (and that CSVLogger will delete its metrics, which vqtok keeps) do not apply.
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* not empty")
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* not empty")
            _keep_csv_metrics(self.trainer)
        if config.get("overwrite") or resuming_here:
            return
        if self.trainer.loggers and run.is_dir() and any(run.iterdir()):
            raise ValueError(f"the run directory {run} already holds a run; resume it with "
                             f"--ckpt_path {run / 'checkpoints' / 'last.ckpt'}, let the logger "
                             f"pick a new version, or pass --overwrite")
        export = config.get("export_dir")
        if export is not None and Path(export).exists():
            raise ValueError(f"--export_dir {export} exists; pass --overwrite to replace it")

    def after_fit(self) -> None:
        run = run_dir(self.trainer)
        if not self.trainer.is_global_zero:
            return
        config = self.config[self.config.subcommand]
        out = config.get("export_dir") or Path(run) / self.export_name
        self.export(Path(out))
        log.info("%s exported to %s", self.export_name, out)

    def export(self, out: Path) -> None:
        """Write the trained model into ``out`` (rank 0, after ``fit``)."""
        self.model.export(out)


def _continue_in_own_run(config: Any) -> None:
    """``--ckpt_path <save_dir>/<name>/<version>/checkpoints/<file>``, with a logger writing
    into ``<save_dir>/<name>`` and no version given: the run continues in ``<version>``, the
    run directory that holds the checkpoint, instead of a new version folder."""
    ckpt, logger = config.get("ckpt_path"), config.get("trainer", {}).get("logger")
    args = getattr(logger, "init_args", None)
    if ckpt is None or args is None or args.get("version") is not None:
        return
    save_dir, name = args.get("save_dir"), args.get("name") or ""
    run = Path(ckpt).parent.parent
    if save_dir is None or Path(ckpt).parent.name != "checkpoints" or not Path(ckpt).is_file():
        return
    if os.path.realpath(run.parent) == os.path.realpath(Path(save_dir) / name):
        args["version"] = run.name


def _keep_csv_metrics(trainer: pl.Trainer) -> None:
    """Lightning's CSVLogger deletes the ``metrics.csv`` it finds in its folder; a resumed
    run keeps that file (a second link to it survives the deletion and is renamed back) and
    appends its rows. Rows of steps trained again after an abrupt stop appear twice, as
    those steps ran twice."""
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger) or not trainer.is_global_zero:
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            keys = next(csv.reader(f), [])
        keep = path.with_name(f".{path.name}.resumed-{os.getpid()}")
        try:
            os.link(path, keep)
        except OSError:  # a file system without hard links
            shutil.copy2(path, keep)
        try:
            writer = logger.experiment  # created now: it removes metrics.csv
        finally:
            os.replace(keep, path)
        writer.metrics_keys = keys  # its header: later rows append under it


class _TokenizerCLI(VqtokCLI):
    export_name = "tokenizer"

    def check_checkpoint(self, path: str, checkpoint: dict[str, Any]) -> None:
        flat = flat_options(checkpoint.get("hyper_parameters") or {})
        if flat:
            raise ValueError(f"checkpoint {path} names its training options one by one "
                             f"({', '.join(flat)}), a layout --ckpt_path does not read; "
                             f"`vqtok export {path} <dir>` still exports its tokenizer")

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's reading of the checkpoint's hyper-parameters into the config, with
        the optimiser's options of older checkpoints first nested into ``optimizer``."""
        config = self.config.get(self.config.get("subcommand") or "", {})
        path = config.get("ckpt_path")
        if not path or not Path(path).is_file():
            return
        hparams = dict(read_run_checkpoint(path, mmap=True).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        hparams.pop("_class_path", None)
        if hparams:
            self.config = self.parser.parse_object(
                {self.config.subcommand: {"model": nest_optimizer_options(hparams)}},
                self.config)

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        # Off by default: a moving average of the weights, exported instead of them
        # (docs/training.md#weight-average); `ema: {class_path: ..., init_args: ...}` on.
        parser.add_lightning_class_args(WeightEMA, "ema", subclass_mode=True, required=False)
        # On by default: codebook usage history into the run directory for `vqtok
        # report`; `--codebook_history null` (or `codebook_history: null`) turns it off.
        parser.add_lightning_class_args(
            CodebookHistory, "codebook_history", subclass_mode=True, required=False)
        parser.set_defaults({"codebook_history": {
            "class_path": f"{CodebookHistory.__module__}.{CodebookHistory.__qualname__}",
            "init_args": {"every_n_steps": 50},
        }})


def run_tokenizer_cli(argv: Sequence[str]) -> VqtokCLI:
    """``vqtok fit|validate|test``: any tokenizer config; returns the CLI (trainer, model)."""
    return _TokenizerCLI(TokenizerModule, pl.LightningDataModule, argv,
                         "Train, validate or test a vqtok image tokenizer.",
                         subclass_mode_data=True)
