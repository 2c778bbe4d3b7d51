"""What the fixed feature networks (vqtok/models/inception.py, efficientnet_lite.py) share:
named fixed tensors, frozen batch normalisation, and the one check of a weights dict
against the names and shapes a network expects."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtok.models.lpips import key_mismatch

__all__ = ["IGNORED_KEYS", "Buffers", "check_weights", "frozen_batch_norm", "without_ignored"]

IGNORED_KEYS = ("num_batches_tracked",)
"""Training bookkeeping that state dicts of batch-normalised networks carry; not weights."""


class Buffers(nn.Module):
    """Named fixed tensors of the given shapes (in the state dict, never trained)."""

    def __init__(self, **shapes: tuple[int, ...]) -> None:
        super().__init__()
        for name, shape in shapes.items():
            self.register_buffer(name, torch.zeros(shape))


def batch_norm_buffers(channels: int) -> Buffers:
    """The four tensors of a batch normalisation: weight, bias, running mean and variance."""
    return Buffers(weight=(channels,), bias=(channels,), running_mean=(channels,),
                   running_var=(channels,))


def frozen_batch_norm(x: Tensor, bn: nn.Module, eps: float) -> Tensor:
    """Batch normalisation with the running statistics of ``bn`` (inference)."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                        training=False, eps=eps)


def without_ignored(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` less the :data:`IGNORED_KEYS` entries."""
    return {k: v for k, v in tensors.items() if k.rpartition(".")[2] not in IGNORED_KEYS}


def check_weights(expected: Mapping[str, tuple[int, ...]], tensors: Mapping[str, Tensor],
                  where: str, what: str) -> None:
    """A one-line ValueError, naming ``where``, unless ``tensors`` holds exactly the
    ``expected`` names with their shapes and finite floating-point values (and
    non-negative running variances); ``what`` names the network."""
    mismatch = key_mismatch(expected, tensors)
    if mismatch:
        raise ValueError(f"{where}: not the {what} weights: {mismatch}")
    for name, shape in expected.items():
        value = tensors[name]
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise ValueError(f"{where}: {name} is not a floating-point tensor")
        if tuple(value.shape) != shape:
            raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}, expected {shape}")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where}: {name} holds NaN or infinite values")
        if name.endswith("running_var") and bool((value < 0).any()):
            raise ValueError(f"{where}: {name} has negative variances")
