"""The FID Inception weights file (docs/eval.md#the-inception-network).

The standard file is the PyTorch port of the 2015-12-05 TensorFlow Inception graph:
torch-fidelity publishes it as ``weights-inception-2015-12-05-6726825d.pth``, pytorch-fid
the same weights as ``pt_inception-2015-12-05-6726825d.pth``. Both names follow torch.hub's
convention ``name-<hash>.ext``: the hex digits after the last dash are the first digits of
the SHA-256 of the whole file (what ``torch.hub.load_state_dict_from_url(check_hash=True)``
verifies), so a file is accepted only when its SHA-256 starts with ``6726825d``. The file is
a plain state dict, read with ``torch.load(weights_only=True)`` (no code runs); its
names and shapes are checked against :func:`vqtok.models.inception.inception_shapes`
first, so a file of another network is called that rather than a checksum mismatch.

Nothing here downloads: ``vqtok data inception`` fetches the file into the user cache
(:mod:`vqtok.data.weights`), or the user gives one with ``--inception FILE``.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor

from vqtok.formats.lpips_weights import read_state_dict
from vqtok.formats.model_dir import file_sha256
from vqtok.models.frozen import without_ignored
from vqtok.models.inception import FIDInception, check_inception_weights

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
"""torch-fidelity's name of the file, the name it has in the cache."""
INCEPTION_SHA256_PREFIX = "6726825d"
"""The first hex digits of the file's SHA-256, as both published names carry them."""
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 + INCEPTION_FILE)
"""Where torch-fidelity publishes the file."""
FETCH_HINT = ("fetch them into the data cache with `vqtok data inception`, or give the file "
              "with --inception FILE; docs/eval.md#the-inception-network")


def read_inception_weights(path: str | os.PathLike[str],
                           sha256_prefix: str = INCEPTION_SHA256_PREFIX) -> dict[str, Tensor]:
    """The tensors of the FID Inception weights file ``path``, once it is checked to be
    that file: the port's names and shapes, and a SHA-256 that starts with
    ``sha256_prefix`` (the published file's, :data:`INCEPTION_SHA256_PREFIX`; module doc);
    else a one-line ValueError naming the file and what is wrong."""
    path = Path(path)
    tensors = read_state_dict(path, "FID Inception weights file")
    tensors = without_ignored(tensors)
    try:
        check_inception_weights(tensors, str(path))
    except ValueError as err:
        raise ValueError(f"{err}; {FETCH_HINT}") from None
    digest = file_sha256(path)
    if not digest.startswith(sha256_prefix):
        raise ValueError(f"{path}: SHA-256 {digest[:16]}... does not start with "
                         f"{sha256_prefix}: not the published FID Inception weights "
                         f"(2015-12-05), though shaped like them; {FETCH_HINT}")
    return tensors


def load_inception(path: str | os.PathLike[str],
                   sha256_prefix: str = INCEPTION_SHA256_PREFIX) -> FIDInception:
    """The FID Inception network with the weights of the checked file ``path``
    (:func:`read_inception_weights`)."""
    return FIDInception(read_inception_weights(path, sha256_prefix))
