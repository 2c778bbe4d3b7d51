"""Reading training checkpoints safely: ``weights_only=True``, registry-built modules."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from vqtok.training.module import TokenizerModule


def load_tokenizer_module(path: str | Path) -> TokenizerModule:
    """Rebuild a :class:`TokenizerModule` from a Lightning checkpoint written by ``vqtok fit``.

    The file is read with ``torch.load(weights_only=True)`` (no code runs) and the modules are
    rebuilt from the registry specs stored in its hyper-parameters.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable checkpoint, or not one of a TokenizerModule.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"checkpoint {path} cannot be read safely: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"checkpoint {path} has no 'state_dict'; is it a Lightning checkpoint?")
    hparams = dict(ckpt.get("hyper_parameters") or {})
    missing = [k for k in ("encoder", "quantizer", "decoder") if k not in hparams]
    if missing:
        raise ValueError(
            f"checkpoint {path} is not a vqtok tokenizer checkpoint: hyper_parameters lack {missing}"
        )
    hparams.pop("_instantiator", None)
    hparams.pop("_class_path", None)
    module = TokenizerModule(**hparams)
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} weights do not match its config: {err}") from err
    return module.eval()
