"""One number per image, gathered from every process: what lists the worst images of an
evaluation (docs/eval.md)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def psnr_per_image(x: Tensor, y: Tensor) -> Tensor:
    """``(B,)`` PSNR in dB of each pair of uint8 images ``(B, C, H, W)``, in float64:
    ``10 log10(255^2 / MSE)``, the same as in [-1, 1] with data range 2; ``inf`` for
    identical images."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) batches of one shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    mse = (x.to(torch.float64) - y.to(torch.float64)).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse)


class PerImage(Metric):
    """``update(index (B,), value (B,))``; ``compute() -> (index, value)`` of every image
    seen by any process, sorted by index (float64 values)."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("value", default=[], dist_reduce_fx="cat")

    def update(self, index: Tensor, value: Tensor) -> None:
        if index.shape != value.shape or index.ndim != 1:
            raise ValueError(f"expected index and value of one shape (B,), got "
                             f"{tuple(index.shape)} and {tuple(value.shape)}")
        self.index.append(index.to(torch.int64))
        self.value.append(value.to(torch.float64))

    def compute(self) -> tuple[Tensor, Tensor]:
        if isinstance(self.index, list) and not self.index:  # nothing seen, nothing gathered
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64)
        index, value = dim_zero_cat(self.index), dim_zero_cat(self.value)  # lists, or tensors
        # once gathered across processes
        order = torch.argsort(index)
        return index[order], value[order]
