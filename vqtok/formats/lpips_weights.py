"""The LPIPS weights file, made from the two published artefacts (docs/training.md#lpips).

Inputs, both read with ``torch.load(weights_only=True)`` (no code runs):

* a torchvision-format VGG16 state dict (``vgg16-397923af.pth``, torchvision's
  ``IMAGENET1K_V1`` weights): only ``features.*`` is used, ``classifier.*`` is ignored;
* the ``lpips`` package's linear heads for VGG (``lpips/weights/v0.1/vgg.pth`` inside its
  wheel): ``lin0.model.1.weight`` ... ``lin4.model.1.weight``, each ``(1, C, 1, 1)``.

Output: one safetensors file in the layout of :mod:`vqtok.models.lpips` (the VGG tensors
under their own names, the heads as ``heads.<i>.weight``), float32, with the metadata
``vqtok.format = lpips-vgg16`` and the SHA-256 of both inputs. Written atomically.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor

from vqtok.formats.atomic import atomic_write_bytes
from vqtok.formats.model_dir import file_sha256
from vqtok.models.frozen import key_mismatch
from vqtok.models.lpips import (
    LPIPS_FORMAT,
    LPIPS_MARKER,
    TAP_CHANNELS,
    check_lpips_weights,
    lpips_shapes,
)
from vqtok.version import vqtok_version

HEAD_KEYS = tuple(f"lin{i}.model.1.weight" for i in range(len(TAP_CHANNELS)))
"""The lpips package's names of the five heads, in tap order."""


def read_state_dict(path: str | os.PathLike[str], what: str) -> dict[str, Tensor]:
    """The tensors of the ``.pth`` file ``path`` (``what`` names it in errors), read with
    ``weights_only=True``; a missing or unreadable file, or one that is not a flat mapping
    of names to tensors, raises a one-line ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    try:
        loaded: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError,
            ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{what} {path} cannot be read as a PyTorch state dict ({reason})"
                         ) from err
    if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()):
        raise ValueError(f"{what} {path} is not a state dict (a mapping of names to tensors)")
    return loaded


def lpips_weights_from_files(vgg: str | os.PathLike[str], heads: str | os.PathLike[str]
                             ) -> dict[str, Tensor]:
    """The tensors of the LPIPS weights file, by name, from the two published files
    (module doc), checked: wrong or missing keys or shapes raise a one-line ValueError."""
    vgg_dict = read_state_dict(vgg, "VGG16 state dict")
    heads_dict = read_state_dict(heads, "LPIPS heads file")
    shapes = lpips_shapes()
    wanted = [k for k in shapes if k.startswith("features.")]
    features = {k: v for k, v in vgg_dict.items() if k.startswith("features.")}
    mismatch = key_mismatch(wanted, features)
    if mismatch:
        raise ValueError(f"VGG16 state dict {vgg}: not torchvision's vgg16() weights "
                         f"(vgg16_bn and other networks differ): {mismatch}")
    mismatch = key_mismatch(HEAD_KEYS, heads_dict)
    if mismatch:
        raise ValueError(f"LPIPS heads file {heads}: not the lpips package's VGG heads "
                         f"(weights/v0.1/vgg.pth): {mismatch}")
    tensors = {k: features[k] for k in wanted}
    tensors.update({f"heads.{i}.weight": heads_dict[k] for i, k in enumerate(HEAD_KEYS)})
    for name, value in tensors.items():  # name the input file that is wrong
        source = f"VGG16 state dict {vgg}" if name.startswith("features.") else (
            f"LPIPS heads file {heads}")
        key = name if name.startswith("features.") else HEAD_KEYS[int(name.split(".")[1])]
        if value.is_floating_point() and tuple(value.shape) != shapes[name]:
            other = "" if name.startswith("features.") else (
                " (the heads of another network, such as alex.pth? use weights/v0.1/vgg.pth)")
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, expected "
                             f"{shapes[name]}{other}")
    check_lpips_weights(tensors, f"{vgg} + {heads}")
    return {k: v.to(torch.float32).contiguous() for k, v in tensors.items()}


def write_lpips_weights(path: str | os.PathLike[str], tensors: dict[str, Tensor],
                        sources: dict[str, Path] | None = None) -> Path:
    """Write the checked ``tensors`` as the LPIPS weights file ``path``, atomically; the
    SHA-256 of each of ``sources`` (name -> file) is recorded in the metadata."""
    check_lpips_weights(tensors, str(path))
    metadata = {LPIPS_MARKER: LPIPS_FORMAT, "format": "pt", "vqtok_version": vqtok_version()}
    for name, source in (sources or {}).items():
        metadata[f"{name}_sha256"] = file_sha256(Path(source))
    return atomic_write_bytes(path, save(tensors, metadata=metadata))
