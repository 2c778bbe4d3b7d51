"""Helpers shared by test modules: the data sets the suite may read, and tiny models."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl
import pytest
import torch

from vqtok.data import data_home, dataset_dir
from vqtok.data.fashion_mnist import FILES, find_file
from vqtok.models import Decoder, Encoder, VQAutoencoder
from vqtok.quantizers import FSQ

FASHION_MNIST = dataset_dir("fashion-mnist")
"""Where the suite looks for Fashion-MNIST (``$VQTOK_DATA/fashion-mnist``)."""


def has_fashion_mnist() -> bool:
    return all(find_file(FASHION_MNIST, name) for pair in FILES.values() for name in pair)


needs_fashion_mnist = pytest.mark.skipif(
    not has_fashion_mnist(),
    reason=f"needs Fashion-MNIST in {FASHION_MNIST}: run `vqtok data fashion-mnist` (or "
           f"`vqtok data fashion-mnist --from DIR`), or point VQTOK_DATA at a folder holding "
           f"fashion-mnist/ (the data cache is {data_home()})")

TINY = {"channels": 8, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "dim": 4,
        "num_groups": 4}
"""A 4x-downsampling conv encoder/decoder small enough for unit tests."""


def tiny_model(quantizer: torch.nn.Module | None = None, seed: int = 0, in_channels: int = 3,
               norm: str = "group") -> VQAutoencoder:
    """A seeded tiny autoencoder (FSQ with 1,000 codes unless another quantizer is given)."""
    torch.manual_seed(seed)
    quantizer = FSQ(levels=[8, 5, 5, 5]) if quantizer is None else quantizer
    return VQAutoencoder(Encoder(in_channels=in_channels, norm=norm, **TINY), quantizer,
                         Decoder(out_channels=in_channels, norm=norm, **TINY))


class SigtermAtStep(pl.Callback):
    """Sends this process SIGTERM after optimizer step ``step``, as a scheduler would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
