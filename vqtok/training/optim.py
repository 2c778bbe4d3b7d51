"""The one optimiser and learning-rate schedule of every vqtok LightningModule.

AdamW (Loshchilov & Hutter 2019) with weight decay on weight matrices only, and a schedule
of linear warm-up followed by half a cosine down to a floor
(docs/algorithms.md#learning-rate-schedule); a floor of 1 keeps the rate constant after
the warm-up.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then half a cosine from 1
    down to ``floor`` at step ``total`` (SGDR, Loshchilov & Hutter 2017, eq. 5)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_warmup_cosine(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 1.0,
    no_decay: Callable[[str, nn.Parameter], bool] = lambda name, p: False,
) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: AdamW over the trainable parameters, weight
    decay on those of two or more dimensions that ``no_decay`` does not exempt, and the
    :func:`warmup_cosine` factor stepped every optimiser step."""
    decay, plain = [], []
    for name, param in named_parameters:
        if param.requires_grad:
            (plain if param.ndim < 2 or no_decay(name, param) else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}],
        lr=lr, betas=tuple(betas))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        warmup_cosine, warmup=max(0, int(warmup_steps)), total=max(1, int(total_steps)),
        floor=min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@dataclasses.dataclass(frozen=True)
class AdamWConfig:
    """The autoencoder's optimiser settings, one config block (``model.optimizer``).

    Args:
        lr: AdamW learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay on weight matrices only (not on biases, norms or
            any quantizer parameter: codebooks, SimVQ's map, FSQ's projections).
        warmup_steps: linear learning-rate warm-up steps.
        min_lr_ratio: after the warm-up, half a cosine down to ``min_lr_ratio * lr`` at the
            trainer's last step; 1 (the default) keeps the rate constant.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optimizer.betas must be two numbers in [0, 1), got "
                             f"{self.betas!r}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("optimizer.weight_decay and optimizer.warmup_steps must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optimizer.min_lr_ratio must be in [0, 1], got "
                             f"{self.min_lr_ratio!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @classmethod
    def build(cls, given: AdamWConfig | dict[str, Any] | None) -> AdamWConfig:
        """``given`` as a config: ``None`` gives the defaults; a dict (what checkpoints
        store) must name only the fields above."""
        if given is None or isinstance(given, cls):
            return given or cls()
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"optimizer: unknown option(s) {', '.join(unknown)}; the options "
                             f"are lr, betas, weight_decay, warmup_steps, min_lr_ratio")
        return cls(**given)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
