"""Training checkpoints: how ``vqtok fit`` writes and reads them (:class:`RunCheckpointIO`),
and rebuilding a TokenizerModule from one (``vqtok export``), including checkpoints whose
hyper-parameters still name the adversarial, perceptual and averaging options one by one
(:func:`flat_options`)."""

from __future__ import annotations

import errno
import io
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from vqtok.formats.atomic import atomic_write_bytes
from vqtok.formats.checkpoint import read_checkpoint
from vqtok.formats.schema import FormatError
from vqtok.training.module import TokenizerModule

_RECONSTRUCTION_OPTIONS = {"recon_loss": "pixel_loss", "lpips_weights": "lpips_weights",
                           "perceptual_weight": "perceptual_weight"}
_ADVERSARIAL_OPTIONS = {"gan_loss": "gan_loss", "disc_weight": "weight", "disc_start": "start",
                        "disc_lr": "lr", "disc_betas": "betas",
                        "adaptive_weight_max": "adaptive_weight_max",
                        "lecam_weight": "lecam_weight", "lecam_decay": "lecam_decay"}
_OPTIMIZER_OPTIONS = ("lr", "betas", "weight_decay", "warmup_steps", "min_lr_ratio")
_FLAT_OPTIONS = {*_RECONSTRUCTION_OPTIONS, *_ADVERSARIAL_OPTIONS, "discriminator", "ema_decay",
                 "export_ema"}


class RunCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` that never leaves a half-written checkpoint and
    names the file it cannot read (docs/training.md#exact-resume).

    Writing: the checkpoint goes to a temporary file in the checkpoint's own folder, is
    flushed and fsynced, and only then renamed over the old file
    (:func:`~vqtok.formats.atomic.atomic_write`), so a full disk or a killed process leaves
    the previous checkpoint whole. (Lightning's own writer stages the file in the system's
    temporary folder and copies it across file systems, which a full disk cuts short under
    the final name.) A failed write raises an ``OSError`` of one line naming the folder.

    Reading (``--ckpt_path``): always ``weights_only=True``; an empty, truncated or corrupt
    file is a :class:`~vqtok.formats.schema.FormatError` naming it.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike[str],
                        storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        # Serialised in memory first (as Lightning does), so that a failing write is the
        # file system's OSError rather than torch's writer reporting a position mismatch.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            atomic_write_bytes(target, buffer.getbuffer())
        except OSError as err:
            reason = "the disk is full" if err.errno == errno.ENOSPC else err.strerror or err
            raise OSError(err.errno, f"cannot write checkpoint {target.name} into "
                                     f"{target.parent}: {reason}; the previous checkpoint "
                                     f"there is unchanged") from None

    def load_checkpoint(self, path: str | os.PathLike[str],
                        map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return read_run_checkpoint(path, map_location)


def read_run_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu",
                        mmap: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True``; ``mmap`` maps its tensors
    instead of reading them (a cheap check that the file is whole). A missing file is a
    FileNotFoundError, an empty, truncated or corrupt one a
    :class:`~vqtok.formats.schema.FormatError`, each one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise FormatError(f"checkpoint {path} is empty (0 bytes): it was not written "
                          f"completely; resume from another checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (zipfile.BadZipFile, RuntimeError, EOFError) as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise FormatError(f"checkpoint {path} is truncated or corrupt ({first}); resume "
                          f"from another checkpoint") from None
    except pickle.UnpicklingError as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise FormatError(f"checkpoint {path} cannot be read safely (weights_only=True): "
                          f"{first}") from None


def load_tokenizer_module(path: str | Path) -> TokenizerModule:
    """Rebuild a :class:`TokenizerModule` from a Lightning checkpoint written by ``vqtok fit``.

    The file is read with ``torch.load(weights_only=True)`` (no code runs) and the modules are
    rebuilt from the registry specs stored in its hyper-parameters
    (:mod:`vqtok.formats.checkpoint`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable checkpoint, or not one of a TokenizerModule.
    """
    ckpt = read_checkpoint(path)
    hparams = dict(ckpt["hyper_parameters"])
    hparams.pop("_instantiator", None)
    hparams.pop("_class_path", None)
    state = dict(ckpt["state_dict"])
    hparams = nest_optimizer_options(hparams)
    if flat_options(hparams):
        hparams, state = _from_flat_options(hparams, state)
    average = ckpt.get("callbacks", {}).get("WeightEMA", {})
    if average.get("export"):  # what `vqtok fit` exported: the average
        state.update({f"model.{k.removeprefix('module.')}": v
                      for k, v in average["average"].items() if k.startswith("module.")})
    try:
        module = TokenizerModule(**hparams)
    except (TypeError, ValueError) as err:
        raise FormatError(f"checkpoint {path}: cannot rebuild the tokenizer: {err}") from err
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise FormatError(f"checkpoint {path} weights do not match its config: {err}") from err
    return module.eval()


def nest_optimizer_options(hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` with the optimiser's options (``lr``, ``betas``, ``weight_decay``,
    ``warmup_steps``, ``min_lr_ratio``), which older checkpoints name one by one, moved into
    the one ``optimizer`` block the module takes now."""
    hparams = dict(hparams)
    optimizer = {name: hparams.pop(name) for name in _OPTIMIZER_OPTIONS if name in hparams}
    if optimizer:
        hparams["optimizer"] = {**optimizer, **(hparams.get("optimizer") or {})}
    return hparams


def flat_options(hparams: dict[str, Any]) -> list[str]:
    """The hyper-parameters of a checkpoint in the flat layout, which names each option
    of the objectives and of the weight average on its own (``recon_loss``, ``disc_start``,
    ``ema_decay``...) instead of ``reconstruction`` and ``adversarial`` specs and a
    :class:`~vqtok.training.callbacks.WeightEMA` callback; empty for any other."""
    return sorted(_FLAT_OPTIONS & set(hparams))


def _from_flat_options(hparams: dict[str, Any],
                       state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint with :func:`flat_options` as the current module's hyper-parameters
    and state: the options become the objectives' specs; the discriminator's and LeCam's
    weights move under ``adversarial.``; the weight average (``ema.module.``) becomes the
    model's weights when it was what the module exported, and is dropped otherwise."""
    hparams = dict(hparams)
    reconstruction = {new: hparams.pop(old) for old, new in _RECONSTRUCTION_OPTIONS.items()
                      if old in hparams}
    hparams["reconstruction"] = {"class_path": "vqtok.training.objectives.Reconstruction",
                                 "init_args": reconstruction}
    adversarial = {new: hparams.pop(old) for old, new in _ADVERSARIAL_OPTIONS.items()
                   if old in hparams}
    discriminator = hparams.pop("discriminator", None)
    hparams["adversarial"] = None if discriminator is None else {
        "class_path": "vqtok.training.objectives.Adversarial",
        "init_args": {"discriminator": discriminator, **adversarial}}
    averaged = hparams.pop("ema_decay", None) is not None and hparams.pop("export_ema", True)
    hparams.pop("export_ema", None)
    moved: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(("discriminator.", "lecam.")):
            moved[f"adversarial.{key}"] = value
        elif not key.startswith("ema."):
            moved[key] = value
    if averaged:
        moved.update({f"model.{k.removeprefix('ema.module.')}": v for k, v in state.items()
                      if k.startswith("ema.module.")})
    return hparams, moved
