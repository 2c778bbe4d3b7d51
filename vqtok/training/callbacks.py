"""The callbacks of tokenizer training: :class:`RunCheckpoint` (checkpoints for exact
resume), :class:`WeightEMA` (a moving average of the weights, which export writes) and
:class:`CodebookHistory` (codebook usage while a tokenizer trains).

:class:`CodebookHistory` writes the codebook history (:mod:`vqtok.formats.history`,
which documents the two files) into the run directory (``trainer.log_dir``, the logger's
version folder, else ``default_root_dir``), for ``vqtok report``. Only global rank 0 writes; both files
are replaced atomically after every validation run and at the end of training.

Validation metrics are :func:`~vqtok.metrics.usage_stats` of the counts
(docs/algorithms.md#codebook-usage); PSNR/SSIM are the values the module logged
(``val/psnr``, ``val/ssim``). The train curve is cheap and *per batch*: the usage and
perplexity of the ids of one training batch (on rank 0).

The module must be a :class:`CountsCodes`: a ``quantizer`` (for K) and
``validation_counts`` (the validation counts, as
:class:`~vqtok.training.module.TokenizerModule` keeps them). The train curve reads the ids
that ``training_step`` returns under ``"indices"``.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from vqtok.formats import history as history_format
from vqtok.metrics import stage_slots, usage_stats
from vqtok.quantizers import Quantizer
from vqtok.training import data
from vqtok.validation import check_positive


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with what a run needs to resume from wherever it
    stopped: ``checkpoints/last.ckpt`` every ``every_n_train_steps`` steps, at the end of
    training, and when the run is interrupted (SIGTERM, as schedulers send it, or Ctrl-C).
    Resume with ``vqtok fit --config ... --ckpt_path <run dir>/checkpoints/last.ckpt``.
    Every checkpoint also holds each rank's random generator states, restored when the
    resumed run starts training (docs/training.md#exact-resume).

    Args:
        every_n_train_steps: save every this many optimizer steps.
        **kwargs: any other ``ModelCheckpoint`` argument (``monitor``, ``save_top_k``...).
    """

    def __init__(self, every_n_train_steps: int = 100, save_last: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(every_n_train_steps=every_n_train_steps, save_last=save_last, **kwargs)
        self._rng_to_restore: list[dict[str, Any]] | None = None

    # ---- exact resume: every rank's random generators travel with the checkpoint --------
    def state_dict(self) -> dict[str, Any]:
        """ModelCheckpoint's state plus each rank's random generators (torch, CUDA, NumPy,
        Python), which dead-code restarts and k-means draw from: a resumed run continues
        their streams where they stopped (docs/training.md#exact-resume). Every rank saves
        a checkpoint's state (Lightning calls this on all of them), so gathering is safe."""
        states = [rng_states()]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, rng_states())
        return {**super().state_dict(), "rng_states": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self._rng_to_restore = state_dict.pop("rng_states", None)
        super().load_state_dict(state_dict)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        loops = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        if loops.get("combined_loader") and not data.RESUMABLE_LOADERS:
            raise RuntimeError(f"resuming {trainer.ckpt_path} needs the torchdata package "
                               f"(the checkpoint holds the position of its loaders), which is "
                               f"not installed: pip install torchdata")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _refuse_restarting_the_epoch(trainer)
        # Here, not in load_state_dict: Lightning builds the loaders (which draw from the
        # global generator) between the two, as it did once at the run's start.
        states, self._rng_to_restore = self._rng_to_restore, None
        if not states:
            return
        if len(states) != trainer.world_size:
            warnings.warn(f"the checkpoint holds the random state of {len(states)} process(es) "
                          f"but this run has {trainer.world_size}: random draws continue "
                          f"from the seed, not from where the run stopped", stacklevel=2)
            return
        set_rng_states(states[trainer.global_rank])

    def last_path(self) -> Path:
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    def _save_last_now(self, trainer: pl.Trainer) -> None:
        if self.dirpath is None or trainer.global_step == 0 or trainer.sanity_checking:
            return
        trainer.save_checkpoint(self.last_path(), weights_only=False)
        self.last_model_path = str(self.last_path())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_now(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            self._save_last_now(trainer)


def _refuse_restarting_the_epoch(trainer: pl.Trainer) -> None:
    """A run resumed from the middle of an epoch needs loaders that resume there
    (torchdata's ``StatefulDataLoader``, docs/training.md#exact-resume); without torchdata
    the epoch would silently start over, so refuse. The criterion is Lightning's own (the
    step is not a multiple of the steps per epoch)."""
    if trainer.ckpt_path is None or data.RESUMABLE_LOADERS:
        return
    batches = trainer.num_training_batches
    if not isinstance(batches, int) or batches < 1:  # an endless loader has no epoch end
        return
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
    if trainer.global_step % per_epoch:
        raise RuntimeError(f"resuming {trainer.ckpt_path} in the middle of an epoch (step "
                           f"{trainer.global_step}, {per_epoch} steps an epoch) needs the "
                           f"torchdata package, which is not installed: pip install torchdata")


def rng_states() -> dict[str, Any]:
    """This process's random generators as tensors and plain numbers (what a checkpoint read
    with ``weights_only=True`` may hold)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _scalar(value: Any) -> float | None:
    """A logged metric as a float; None when absent or not finite."""
    if value is None:
        return None
    number = float(value.detach().cpu()) if isinstance(value, Tensor) else float(value)
    return number if np.isfinite(number) else None


@runtime_checkable
class CountsCodes(Protocol):
    """What :class:`CodebookHistory` reads of a module: its quantizer, and the code counts
    of its last validation run (summed over ranks; ``(K,)``, or ``(S * K,)`` (stage, code)
    slots of a multi-stage quantizer)."""

    @property
    def quantizer(self) -> Quantizer: ...

    validation_counts: Tensor | None


class CodebookHistory(pl.Callback):
    """Per-validation code counts and metrics, plus a per-batch train-time usage curve.

    Args:
        every_n_steps: record the usage of the last training batch at the first optimizer
            step and then every this many steps.
        dirpath: where to write the history; default: the run directory
            (``trainer.log_dir``, else ``trainer.default_root_dir``).
    """

    def __init__(self, every_n_steps: int = 50, dirpath: str | None = None) -> None:
        super().__init__()
        check_positive(every_n_steps=every_n_steps)
        self.every_n_steps = every_n_steps
        self.dirpath = dirpath
        self.codebook_size: int | None = None
        self.num_stages = 1
        self.validations: list[dict[str, Any]] = []
        self.counts: list[Tensor] = []  # each (K,) int64 on the CPU
        self.train: list[dict[str, Any]] = []
        self._quantizer_name = ""
        self._quantizer_config = ""
        self._dir: Path | None = None
        self._last_train_step = -1
        self._warned_no_train_ids = False

    # ---- where and what -----------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts rank 0's answer: every rank must ask, not rank 0 only.
        log_dir = trainer.log_dir
        self._dir = Path(self.dirpath or log_dir or trainer.default_root_dir)
        quantizer = pl_module.quantizer if isinstance(pl_module, CountsCodes) else None
        size = getattr(quantizer, "codebook_size", None)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(
                f"CodebookHistory needs a LightningModule with a vqtok `quantizer` (an int "
                f"codebook_size >= 1) and `validation_counts`, got "
                f"{type(pl_module).__name__} whose quantizer is {type(quantizer).__name__}"
            )
        if self.codebook_size is not None and size != self.codebook_size:
            raise ValueError(f"the history holds counts for {self.codebook_size} codes but the "
                             f"module's quantizer has {size}")
        self.codebook_size = size
        self.num_stages = getattr(quantizer, "num_stages", None) or 1
        self._quantizer_name = f"{type(quantizer).__module__}.{type(quantizer).__qualname__}"
        self._quantizer_config = quantizer.extra_repr() if hasattr(quantizer, "extra_repr") else ""

    @property
    def slots(self) -> int:
        """Counted ids: K, or S x K (stage, code) pairs for a multi-stage quantizer."""
        return (self.codebook_size or 0) * self.num_stages

    # ---- train-time curve (per batch) ---------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last_train_step:
            return  # rank 0 only; one record per optimizer step under gradient accumulation
        if self.train and step % self.every_n_steps != 0:
            return
        ids = outputs.get("indices") if isinstance(outputs, dict) else None
        if not isinstance(ids, Tensor) or ids.numel() == 0:
            if not self._warned_no_train_ids:
                warnings.warn(f"{type(pl_module).__name__}.training_step returns no "
                              f"\"indices\"; CodebookHistory records no train-time usage "
                              f"curve", stacklevel=2)
                self._warned_no_train_ids = True
            return
        self._last_train_step = step
        ids = ids.detach()
        if self.num_stages > 1:  # (stage, code) slots, as the validation counts
            ids = stage_slots(ids, self.codebook_size)
        counts = torch.bincount(ids.reshape(-1), minlength=self.slots)
        stats = usage_stats(counts)  # one batch: usage <= batch_ids / K
        self.train.append({
            "step": int(step),
            "epoch": int(trainer.current_epoch),
            "batch_usage": float(stats["usage"]),
            "batch_perplexity": float(stats["perplexity"]),
            "batch_ids": int(ids.numel()),
        })

    # ---- validation runs ----------------------------------------------------------------
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the module's on_validation_epoch_end, so its metrics are logged and
        # validation_counts holds this run's counts (summed over ranks).
        if trainer.sanity_checking:
            return
        counts = pl_module.validation_counts if isinstance(pl_module, CountsCodes) else None
        if not isinstance(counts, Tensor) or counts.shape != (self.slots,):
            shape = tuple(counts.shape) if isinstance(counts, Tensor) else type(counts).__name__
            raise ValueError(
                f"CodebookHistory needs the module to keep `validation_counts` of shape "
                f"({self.slots},) after each validation run, got {shape}"
            )
        counts = counts.detach().to("cpu", torch.int64).clone()
        total = int(counts.sum())
        if total == 0:
            warnings.warn("validation counted no code ids; nothing recorded", stacklevel=2)
            return
        stats = usage_stats(counts)
        logged = trainer.callback_metrics
        self.validations.append({
            "step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "usage": float(stats["usage"]),
            "perplexity": float(stats["perplexity"]),
            "dead_codes": int(stats["dead_codes"]),
            "normalized_entropy": float(stats["normalized_entropy"]),
            "psnr": _scalar(logged.get("val/psnr")),
            "ssim": _scalar(logged.get("val/ssim")),
            "total_ids": total,
        })
        self.counts.append(counts)
        self.write(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)  # the train curve recorded after the last validation run

    # ---- files --------------------------------------------------------------------------
    def history(self) -> dict[str, Any]:
        """The JSON document (:mod:`vqtok.formats.history`)."""
        return {
            "format": history_format.FORMAT,
            "format_version": history_format.FORMAT_VERSION,
            "codebook_size": self.codebook_size,
            "num_stages": self.num_stages,
            "quantizer": self._quantizer_name,
            "quantizer_config": self._quantizer_config,
            "counts_file": history_format.COUNTS_NAME,
            "every_n_steps": self.every_n_steps,
            "validations": list(self.validations),
            "train": list(self.train),
        }

    def write(self, trainer: pl.Trainer) -> None:
        """Write both files (rank 0 only); a no-op before the first validation run."""
        if not trainer.is_global_zero or self._dir is None or not self.validations:
            return
        counts = torch.stack(self.counts).numpy()  # (V, K) int64
        steps = np.array([v["step"] for v in self.validations], dtype=np.int64)  # (V,)
        history_format.write_history(self._dir, self.history(), counts, steps)

    # ---- checkpoints: a resumed run keeps its history -----------------------------------
    def state_dict(self) -> dict[str, Any]:
        stacked = torch.stack(self.counts) if self.counts else torch.zeros(0, self.slots,
                                                                           dtype=torch.int64)
        return {"format_version": history_format.FORMAT_VERSION,
                "codebook_size": self.codebook_size, "validations": list(self.validations),
                "train": list(self.train), "counts": stacked}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("format_version")
        if version != history_format.FORMAT_VERSION:
            raise ValueError(f"CodebookHistory state has format_version {version!r}, this "
                             f"vqtok reads {history_format.FORMAT_VERSION}")
        counts = state_dict["counts"]
        if counts.shape[0] != len(state_dict["validations"]):
            raise ValueError(f"CodebookHistory state holds {counts.shape[0]} count rows for "
                             f"{len(state_dict['validations'])} validation runs")
        size = state_dict["codebook_size"]
        if self.codebook_size is not None and size is not None and size != self.codebook_size:
            raise ValueError(f"CodebookHistory state holds counts for {size} codes but the "
                             f"module's quantizer has {self.codebook_size}")
        self.codebook_size = size if size is not None else self.codebook_size
        self.validations = list(state_dict["validations"])
        self.train = list(state_dict["train"])
        self.counts = [row.to(torch.int64).clone() for row in counts]
        self._last_train_step = self.train[-1]["step"] if self.train else -1


@runtime_checkable
class ExportsAverage(Protocol):
    """What :class:`WeightEMA` needs of a module: the autoencoder it averages, and a way
    to have the average exported."""

    model: nn.Module

    def use_for_export(self, model: Any) -> None: ...


class WeightEMA(pl.Callback):
    """An exponential moving average of the autoencoder's weights
    (``torch.optim.swa_utils.AveragedModel`` of the module's ``model``, buffers included),
    updated after every optimizer step and, with ``export``, what the module exports
    (docs/training.md#weight-average). The average is part of the callback's checkpoint
    state, so a resumed run continues it exactly.

    The update is ``W <- d W + (1 - d) W_model`` on floating-point tensors, with the decay
    warmed up as TensorFlow's ``ExponentialMovingAverage(num_updates=n)`` does,
    ``d = min(decay, (1 + n) / (10 + n))`` for the ``n``-th update after the first (which
    copies), so the first weights do not linger in a short run. Other tensors (step
    counters, flags, integer levels) are copied: an average of them means nothing.

    Args:
        decay: the average's decay ``d`` (e.g. 0.999), in (0, 1).
        export: have the module export the average (the default) rather than the raw
            weights.
    """

    def __init__(self, decay: float = 0.999, export: bool = True) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        self.decay, self.export = decay, export
        self.average: AveragedModel | None = None
        self._seen_step = -1
        self._state_to_load: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return type(self).__name__  # one average a run; `vqtok export` finds it by this key

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.average is not None:
            return
        if not isinstance(pl_module, ExportsAverage):
            raise TypeError(f"WeightEMA needs a module with `model` and `use_for_export`, got "
                            f"{type(pl_module).__name__}")
        self.average = AveragedModel(pl_module.model, multi_avg_fn=ema_update(self.decay),
                                     use_buffers=True)
        self.average.requires_grad_(False)
        if self._state_to_load is not None:
            self.load_state_dict(self._state_to_load)
        if self.export:
            pl_module.use_for_export(self.average.module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.average is not None:
            self.average.to(pl_module.device)
        self._seen_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        # After each optimizer step (not after batches that only accumulate gradients).
        if self.average is not None and trainer.global_step != self._seen_step:
            self._seen_step = trainer.global_step
            self.average.update_parameters(pl_module.model)

    def state_dict(self) -> dict[str, Any]:
        if self.average is None:
            return {} if self._state_to_load is None else dict(self._state_to_load)
        return {"average": self.average.state_dict(), "export": self.export}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.average is None:  # restored before setup: applied there
            self._state_to_load = dict(state_dict)
            return
        self.average.load_state_dict(state_dict["average"])
        self._state_to_load = None


def ema_update(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """``AveragedModel``'s ``multi_avg_fn`` for :class:`WeightEMA` (its doc has the rule)."""

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            n = float(num_averaged)
            weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
            for a, c in zip(averaged, current, strict=True):
                a.lerp_(c, weight)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update
