"""Lightning checkpoints of vqtok models (docs/formats.md#checkpoints), read safely.

A ``.ckpt`` is Lightning's file; vqtok relies on two of its keys: ``state_dict`` and
``hyper_parameters``, where a tokenizer's modules are stored as registry specs
``{"class_path", "init_args"}`` and a decoder's hyper-parameters are plain numbers and
strings. So every vqtok checkpoint loads with ``torch.load(weights_only=True)``: reading
one never runs code.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from vqtok.formats.model_dir import MODULE_SPEC
from vqtok.formats.schema import Anything, FormatError, Obj, validate

TOKENIZER_CHECKPOINT = Obj({
    "state_dict": Anything(),
    "hyper_parameters": Obj({"encoder": MODULE_SPEC, "quantizer": MODULE_SPEC,
                             "decoder": MODULE_SPEC}, open=True),
}, open=True)
"""What a ``TokenizerModule`` checkpoint must hold (other keys are Lightning's)."""


def read_checkpoint(path: str | os.PathLike[str], spec: Obj = TOKENIZER_CHECKPOINT,
                    what: str = "vqtok tokenizer checkpoint") -> dict[str, Any]:
    """The checkpoint at ``path``, read with ``weights_only=True`` and checked against
    ``spec``. Raises FileNotFoundError for a missing file and
    :class:`~vqtok.formats.schema.FormatError` for one that cannot be read safely or is
    not a ``what``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as err:
        raise FormatError(f"checkpoint {path} cannot be read safely: {err}") from err
    try:
        validate(ckpt, spec)
    except FormatError as err:
        raise FormatError(f"checkpoint {path} is not a {what}: {err}") from None
    return ckpt
