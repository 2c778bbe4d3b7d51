"""Reading the ``.ckpt`` / ``.pt`` pickles that taming and LlamaGen publish without running
them (docs/interop.md#safety).

Every global a pickle names is listed before anything is unpickled
(``torch.serialization.get_unsafe_globals_in_checkpoint``, which reads the pickle's
opcodes and calls nothing). One outside :data:`ALLOWED` is refused in one line naming it.
The file is then read with ``torch.load(weights_only=True)``, which rebuilds tensors,
containers and numbers only; the names on :data:`ALLOWED` resolve to inert stand-ins, so
even an allowed name never reaches the code it names.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from vqtok.interop.common import ConversionError


class LightningCallbackKey:
    """Stands for a Lightning callback class that an old Lightning checkpoint uses as the
    key of its ``callbacks`` dict (the class itself, not an instance): never called."""


ALLOWED: dict[str, type] = {
    # taming's published checkpoints (pytorch-lightning 1.0): {ModelCheckpoint: {...}}
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint": LightningCallbackKey,
}
"""The globals outside ``torch.load(weights_only=True)``'s own list that a published
checkpoint may name, and the inert class each one becomes."""


def read_pickle(path: Path) -> Any:
    """The object pickled in ``path`` (a torch checkpoint), read without running code; a
    missing or unreadable file, or a global outside :data:`ALLOWED`, is one
    :class:`ConversionError` line naming the file."""
    if not path.is_file():
        raise ConversionError(f"{path}: missing file")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except ValueError:  # the legacy (pre-zip) format: torch.load names the first global
        names = []
    except (RuntimeError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        raise ConversionError(f"{path}: not a readable torch checkpoint "
                              f"({_first_line(err)})") from err
    for name in names:
        _refuse_unless_allowed(name, path)
    try:
        with torch.serialization.safe_globals([(cls, name) for name, cls in ALLOWED.items()]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            _refuse_unless_allowed(found.group(1), path)
        raise ConversionError(f"{path}: cannot be read safely ({_first_line(err)})") from err
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise ConversionError(f"{path}: not a readable torch checkpoint "
                              f"({_first_line(err)})") from err


def _refuse_unless_allowed(name: str, path: Path) -> None:
    if name not in ALLOWED:
        raise ConversionError(f"{path}: refused: the pickle names the global {name}, which a "
                              f"weights file never needs; nothing in it was run")


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
