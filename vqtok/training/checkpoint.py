"""Rebuilding a TokenizerModule from a training checkpoint (``vqtok export``)."""

from __future__ import annotations

from pathlib import Path

from vqtok.formats.checkpoint import read_checkpoint
from vqtok.formats.schema import FormatError
from vqtok.training.module import TokenizerModule

__all__ = ["load_tokenizer_module"]


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
    try:
        module = TokenizerModule(**hparams)
    except (TypeError, ValueError) as err:
        raise FormatError(f"checkpoint {path}: cannot rebuild the tokenizer: {err}") from err
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise FormatError(f"checkpoint {path} weights do not match its config: {err}") from err
    return module.eval()
