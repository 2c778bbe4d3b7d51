"""What the fixed feature networks (vqtok/models/inception.py, efficientnet_lite.py) share:
named fixed tensors, frozen batch normalisation, and the one check of a weights dict
against the names and shapes a network expects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def key_mismatch(expected: Iterable[str], found: Iterable[str]) -> str:
    """``"missing a, b; unexpected c"`` for the names of ``expected`` not ``found`` and the
    other way round (the first few of each); empty when the two sets are equal."""
    expected, found = list(expected), list(found)
    expected_set, found_set = set(expected), set(found)
    missing = [k for k in expected if k not in found_set]
    unexpected = sorted(k for k in found if k not in expected_set)

    def few(names: list[str]) -> str:
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    return "; ".join([f"missing {few(missing)}"] * bool(missing)
                     + [f"unexpected {few(unexpected)}"] * bool(unexpected))


class FixedNetwork(nn.Module):
    """A network of fixed, checked weights: a subclass lays out its modules in
    :meth:`_layout` (zero buffers) and names itself in :attr:`what`; the constructor loads
    ``weights`` (every tensor of :meth:`shapes` by name, :data:`IGNORED_KEYS` ignored),
    checked by :func:`check_weights` first. It stays in eval mode."""

    what: str = "network"
    num_features: int
    _shapes: dict[str, tuple[int, ...]] | None = None

    def __init__(self, weights: Mapping[str, Tensor]) -> None:
        super().__init__()
        self._layout()
        weights = without_ignored(weights)
        check_weights(self.shapes(), weights, f"{self.what} weights", self.what)
        self.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()})
        super().train(False)

    def _layout(self) -> None:
        raise NotImplementedError

    @classmethod
    def shapes(cls) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every weight, from a bare instance's layout (cached)."""
        if cls.__dict__.get("_shapes") is None:
            bare = cls.__new__(cls)
            nn.Module.__init__(bare)
            bare._layout()
            cls._shapes = {name: tuple(t.shape) for name, t in bare.state_dict().items()}
        return dict(cls._shapes)

    def train(self, mode: bool = True) -> FixedNetwork:
        """Always eval: the network is a fixed function."""
        return super().train(False)


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
