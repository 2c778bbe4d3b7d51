"""The one optimiser and learning-rate schedule of every vqtok LightningModule.

AdamW (Loshchilov & Hutter 2019) with weight decay on weight matrices only, and a schedule
of linear warm-up followed by half a cosine down to a floor
(docs/algorithms.md#learning-rate-schedule); a floor of 1 keeps the rate constant after
the warm-up.
"""

from __future__ import annotations

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
