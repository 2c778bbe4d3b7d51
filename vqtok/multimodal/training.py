"""Training the multimodal decoder on caption + image streams (issue 5).

:class:`CaptionImageDataModule` tokenizes a labelled image dataset (Fashion-MNIST) once with
an exported :class:`~vqtok.tokenizer.ImageTokenizer`, caching the ids, and serves streams
``[BOS] "a photo of an ankle boot" [BOI] 8x8 codes [EOI] [EOS]`` padded with a mask.
:class:`DecoderModule` trains a :class:`~vqtok.multimodal.MultimodalDecoder` on them with
the next-token loss and logs the loss on image tokens alone (the position-scheme ablation's
metric).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vqtok.atomic import atomic_write
from vqtok.data import FashionMNIST
from vqtok.io import CONFIG_NAME, WEIGHTS_NAME, read_config
from vqtok.multimodal.decoder import DecoderConfig, MultimodalDecoder
from vqtok.multimodal.positions import make_scheme
from vqtok.multimodal.streams import (
    Modality,
    Stream,
    StreamBatch,
    Vocabulary,
    build_stream,
    collate,
)
from vqtok.tokenizer import ImageTokenizer
from vqtok.training.data import train_val_split  # the same split as the tokenizer data

log = logging.getLogger(__name__)


# ---- captions and the token cache ------------------------------------------------------


def caption_for(label: str, template: str = "a photo of a {label}") -> str:
    """``template`` filled with the lower-cased ``label``; ``"a {label}"`` becomes
    ``"an {label}"`` before a vowel ("a photo of an ankle boot")."""
    if "{label}" not in template:
        raise ValueError(f"caption_template must contain '{{label}}', got {template!r}")
    name = label.strip().lower()
    if not name:
        raise ValueError(f"label must be non-empty text, got {label!r}")
    if name[0] in "aeiou":
        template = template.replace("a {label}", "an {label}")
    return template.format(label=name)


def tokenizer_fingerprint(tokenizer_dir: str | os.PathLike[str]) -> str:
    """SHA-256 of what a tokenizer's ids depend on: its config (modules, image and
    normalisation; not the free ``extra`` metadata or the vqtok version) and its tensors by
    name. Two exports of the same weights share it even when the files' bytes differ."""
    root = Path(tokenizer_dir)
    config = read_config(root / CONFIG_NAME)
    for key in ("extra", "vqtok_version"):
        config.pop(key, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    with safe_open(str(root / WEIGHTS_NAME), framework="np") as f:
        for name in sorted(f.keys()):
            array = f.get_tensor(name)
            digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def encode_cached(tokenizer: ImageTokenizer, dataset: Dataset, indices: list[int],
                  cache_file: Path | None, batch_size: int = 256) -> Tensor:
    """Token ids ``(len(indices), h, w)`` of the images ``dataset[i][0]`` (float ``(C, H, W)``
    in the tokenizer's input space, one size for all), reusing and extending ``cache_file``.

    The cache holds ``ids (N, h, w)`` and ``done (N,)`` for the whole dataset; only the
    missing requested images are encoded, and the file is rewritten atomically (temporary
    file + rename), so an interrupted run never leaves a half-written cache.
    """
    n = len(dataset)  # type: ignore[arg-type]
    h, w = tokenizer.tokens_shape(*dataset[0][0].shape[-2:])
    dtype = np.uint16 if tokenizer.codebook_size <= 1 << 16 else np.int32
    ids = np.zeros((n, h, w), dtype=dtype)
    done = np.zeros(n, dtype=bool)
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as data:
            if data["ids"].shape == ids.shape and data["done"].shape == done.shape:
                ids, done = data["ids"].astype(dtype), data["done"].copy()
            else:
                log.warning("ignoring token cache %s of shape %s (expected %s)", cache_file,
                            data["ids"].shape, ids.shape)
    wanted = np.asarray(indices, dtype=np.int64)
    missing = wanted[~done[wanted]]
    if missing.size:
        start = time.perf_counter()
        for chunk in np.array_split(missing, math.ceil(missing.size / 4096)):
            x = torch.stack([dataset[int(i)][0] for i in chunk])  # (m, C, H, W)
            if x.shape[1] == 1 and tokenizer.channels == 3:
                x = x.expand(-1, 3, -1, -1)
            ids[chunk] = tokenizer.encode(x, batch_size=batch_size).numpy()
        done[missing] = True
        log.info("tokenized %d images in %.1f s", missing.size, time.perf_counter() - start)
        if cache_file is not None:
            _save_npz_atomic(cache_file, ids=ids, done=done)
    return torch.from_numpy(ids[wanted].astype(np.int64))


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


# ---- data --------------------------------------------------------------------------------


class CaptionImageDataset(Dataset):
    """``(grids (N, h, w), labels (N,))`` as streams ``[BOS] caption [BOI] grid [EOI] [EOS]``."""

    def __init__(self, grids: Tensor, labels: Tensor, captions: list[str], vocab: Vocabulary,
                 scheme: str) -> None:
        if grids.dim() != 3 or labels.shape != grids.shape[:1]:
            raise ValueError(f"need grids (N, h, w) and labels (N,), got shapes "
                             f"{tuple(grids.shape)} and {tuple(labels.shape)}")
        self.grids, self.labels = grids, labels
        self.captions, self.vocab, self.scheme = captions, vocab, make_scheme(scheme)

    def __len__(self) -> int:
        return self.grids.shape[0]

    def __getitem__(self, index: int) -> Stream:
        caption = self.captions[int(self.labels[index])]
        return build_stream([caption, self.grids[index]], self.vocab, self.scheme, add_eos=True)


class CaptionImageDataModule(pl.LightningDataModule):
    """Fashion-MNIST captions + image tokens for the multimodal decoder.

    Args:
        tokenizer: an exported tokenizer directory (``vqtok fit`` writes one).
        data_root: folder with the Fashion-MNIST IDX files.
        caption_template: caption of an image from its lower-cased class name.
        position_scheme: ``"rope_tie_v2"``, ``"mrope"``, ``"1d"`` or ``"nope"``; must be the
            decoder's (the CLI links it to ``model.position_scheme``).
        batch_size: streams per batch.
        val_size: training images held out for validation (the split of
            :class:`~vqtok.training.data.FashionMNISTDataModule` with the same ``seed``).
        limit_train: keep only the first this-many training images (None: all).
        limit_test: keep only the first this-many test images (None: all 10,000).
        pad_to: image side after zero padding.
        cache_dir: where tokenized datasets are cached (keyed by the tokenizer's weights
            hash); None: no cache.
        encode_batch_size: images per tokenizer forward pass.
        num_workers: DataLoader worker processes.
        seed: fixes the train/val split.
    """

    def __init__(self, tokenizer: str, data_root: str = "../shared/data/fashion-mnist",
                 caption_template: str = "a photo of a {label}",
                 position_scheme: str = "rope_tie_v2", batch_size: int = 64,
                 val_size: int = 1000, limit_train: int | None = None,
                 limit_test: int | None = None, pad_to: int = 32,
                 cache_dir: str | None = "runs/token_cache", encode_batch_size: int = 256,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("val_size", val_size),
                            ("limit_train", limit_train), ("limit_test", limit_test)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        make_scheme(position_scheme)  # validates the name
        self.save_hyperparameters()
        self.tokenizer_dir = str(tokenizer)
        self.tokenizer = ImageTokenizer.from_pretrained(tokenizer)
        self.fingerprint = tokenizer_fingerprint(tokenizer)
        self.class_names = [c.lower() for c in FashionMNIST.CLASSES]
        self.caption_template = caption_template
        self.captions = [caption_for(c, caption_template) for c in self.class_names]
        self.vocab = Vocabulary(image_codebook_size=self.tokenizer.codebook_size)
        self.image_tokens = self.tokenizer.tokens_shape(pad_to, pad_to)
        self.position_scheme = position_scheme
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set: CaptionImageDataset | None = None
        self.val_set: CaptionImageDataset | None = None
        self.test_set: CaptionImageDataset | None = None

    @property
    def image_codebook_size(self) -> int:
        return self.vocab.image_codebook_size

    def cache_file(self, split: str) -> Path | None:
        """The token cache of one split for this tokenizer."""
        cache_dir = self.hparams.cache_dir
        if cache_dir is None:
            return None
        name = f"fashion_mnist-{split}-pad{self.hparams.pad_to}-{self.fingerprint[:16]}.npz"
        return Path(cache_dir) / name

    def _dataset(self, full: FashionMNIST, split: str, indices: list[int]) -> CaptionImageDataset:
        grids = encode_cached(self.tokenizer, full, indices, self.cache_file(split),
                              self.hparams.encode_batch_size)
        return CaptionImageDataset(grids, full.labels[indices], self.captions, self.vocab,
                                   self.position_scheme)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.train_set is None and stage in (None, "fit", "validate"):
            full = FashionMNIST(hp.data_root, "train", pad_to=hp.pad_to)
            train_idx, val_idx = train_val_split(len(full), hp.val_size, hp.seed)
            train_idx = train_idx[: hp.limit_train] if hp.limit_train else train_idx
            self.train_set = self._dataset(full, "train", train_idx)
            self.val_set = self._dataset(full, "train", val_idx)
        if self.test_set is None and stage in (None, "test"):
            full = FashionMNIST(hp.data_root, "test", pad_to=hp.pad_to)
            count = min(len(full), hp.limit_test or len(full))
            self.test_set = self._dataset(full, "test", list(range(count)))

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=functools.partial(collate, vocab=self.vocab))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


# ---- model -------------------------------------------------------------------------------


def stream_losses(logits: Tensor, batch: StreamBatch) -> dict[str, Tensor]:
    """Next-token cross-entropy of ``logits (B, T, V)`` on ``batch``: ``"loss"`` over every
    real target token, ``"image_loss"`` over image-code targets only, ``"text_loss"`` over
    text bytes; padding is never a target. Also the token counts ``"n_image"``, ``"n_all"``."""
    targets = batch.ids[:, 1:]  # token t+1 is predicted at t
    real = batch.mask[:, 1:] & batch.mask[:, :-1]
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                          reduction="none").view_as(targets)  # (B, T-1)
    image = real & (batch.modality[:, 1:] == Modality.IMAGE)
    text = real & (batch.modality[:, 1:] == Modality.TEXT)

    def mean(where: Tensor) -> Tensor:
        return (nll * where).sum() / where.sum().clamp_min(1)

    return {"loss": mean(real), "image_loss": mean(image), "text_loss": mean(text),
            "n_image": image.sum(), "n_all": real.sum()}


_ARCH_FIELDS = [f.name for f in fields(DecoderConfig) if f.name != "vocab_size"]


class DecoderModule(pl.LightningModule):
    """A :class:`MultimodalDecoder` trained with the next-token loss on stream batches.

    Args:
        image_codebook_size: the tokenizer's codebook size (the CLI links it from the data).
        text_vocab: text ids (256 UTF-8 bytes).
        d_model ... init_std: the :class:`~vqtok.multimodal.DecoderConfig` fields (see there).
        lr: peak AdamW learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay on matrices (not on norms).
        warmup_steps: linear warm-up steps, then cosine decay to ``min_lr_ratio * lr`` at the
            trainer's last step.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
    """

    def __init__(self, image_codebook_size: int, text_vocab: int = 256, d_model: int = 128,
                 n_layers: int = 4, n_heads: int = 4, head_dim: int | None = None,
                 attention: str = "mha", n_kv_heads: int | None = None,
                 d_latent: int | None = None, d_rope: int | None = None,
                 mlp_hidden: int | None = None, position_scheme: str = "rope_tie_v2",
                 rope_base: float = 10000.0, norm_eps: float = 1e-5, tie_embeddings: bool = True,
                 init_std: float = 0.02, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.1,
                 warmup_steps: int = 100, min_lr_ratio: float = 0.1) -> None:
        super().__init__()
        # Plain numbers and strings only: the checkpoint loads with weights_only=True.
        self.save_hyperparameters()
        self.hparams.pop("_instantiator", None)
        self.hparams.pop("_class_path", None)
        self.vocab = Vocabulary(text_vocab, image_codebook_size=image_codebook_size)
        arch = {name: self.hparams[name] for name in _ARCH_FIELDS}
        self.model = MultimodalDecoder(DecoderConfig(vocab_size=self.vocab.size, **arch))

    @classmethod
    def from_config(cls, config: DecoderConfig, vocab: Vocabulary, **training: Any
                    ) -> DecoderModule:
        """A module for an existing ``config`` and ``vocab`` (their sizes must agree)."""
        if config.vocab_size != vocab.size:
            raise ValueError(f"config.vocab_size {config.vocab_size} != vocabulary size "
                             f"{vocab.size}")
        arch = {name: getattr(config, name) for name in _ARCH_FIELDS}
        return cls(vocab.image_codebook_size, vocab.text_vocab, **arch, **training)

    @property
    def config(self) -> DecoderConfig:
        return self.model.config

    def forward(self, batch: StreamBatch) -> Tensor:
        """Logits ``(B, T, vocab_size)`` of a padded stream batch."""
        return self.model(batch.ids, batch.positions, batch.mask)

    def setup(self, stage: str) -> None:
        """Refuse a DataModule whose vocabulary or position scheme is not the decoder's."""
        data = self.trainer.datamodule  # None when fit was given dataloaders
        if data is None:
            return
        vocab, scheme = getattr(data, "vocab", None), getattr(data, "position_scheme", None)
        if vocab is not None and vocab.size != self.vocab.size:
            raise ValueError(f"the data's vocabulary ({vocab}) does not match the decoder's "
                             f"({self.vocab})")
        if scheme is not None and scheme != self.config.position_scheme:
            raise ValueError(f"the data's position_scheme {scheme!r} differs from the "
                             f"decoder's {self.config.position_scheme!r}")

    def training_step(self, batch: StreamBatch, batch_idx: int) -> Tensor:
        terms = stream_losses(self(batch), batch)
        size = batch.ids.shape[0]
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=size)
        self.log("train/image_loss", terms["image_loss"], batch_size=size)
        return terms["loss"]

    def validation_step(self, batch: StreamBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: StreamBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: StreamBatch, stage: str) -> None:
        terms = stream_losses(self(batch), batch)
        # Epoch values are token-weighted means: weight each batch by its token counts.
        self.log(f"{stage}/loss", terms["loss"], batch_size=int(terms["n_all"]), sync_dist=True,
                 prog_bar=True)
        self.log(f"{stage}/image_loss", terms["image_loss"], batch_size=int(terms["n_image"]),
                 sync_dist=True, prog_bar=True)
        self.log(f"{stage}/text_loss", terms["text_loss"], batch_size=int(terms["n_all"]),
                 sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr, betas=tuple(self.hparams.betas))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(warmup_cosine, warmup=self.hparams.warmup_steps,
                                         total=total, floor=self.hparams.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then half a cosine from 1
    down to ``floor`` at step ``total`` (SGDR, Loshchilov & Hutter 2017, eq. 5)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


__all__ = [
    "CaptionImageDataModule",
    "CaptionImageDataset",
    "DecoderModule",
    "caption_for",
    "encode_cached",
    "stream_losses",
    "tokenizer_fingerprint",
    "warmup_cosine",
]
