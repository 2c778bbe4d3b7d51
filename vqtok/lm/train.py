"""Training the language model on caption + image (or video) streams.

:class:`LMModule` trains a :class:`~vqtok.lm.model.MultimodalLM` on the batches of
:class:`~vqtok.lm.data.CaptionImageDataModule` with the next-token loss and logs the loss
on image tokens alone (the position-scheme ablation's metric).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.nn.functional as F
from torch import Tensor

from vqtok.lm.data import CaptionImageDataModule
from vqtok.lm.lm_dir import save_lm_dir
from vqtok.lm.model import LMConfig, MultimodalLM
from vqtok.lm.streams import Modality, StreamBatch, Vocabulary
from vqtok.training.optim import adamw_warmup_cosine


def stream_losses(logits: Tensor, batch: StreamBatch) -> dict[str, Tensor]:
    """Next-token cross-entropy of ``logits (B, T, V)`` on ``batch``: ``"loss"`` over every
    real target token, ``"image_loss"`` over codebook targets only (image and video codes),
    ``"text_loss"`` over text bytes; padding is never a target. Also the token counts ``"n_image"``, ``"n_text"``
    and ``"n_all"``, the weights of those means."""
    targets = batch.ids[:, 1:]  # token t+1 is predicted at t
    real = batch.mask[:, 1:] & batch.mask[:, :-1]
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                          reduction="none").view_as(targets)  # (B, T-1)
    modality = batch.modality[:, 1:]
    image = real & ((modality == Modality.IMAGE) | (modality == Modality.VIDEO))
    text = real & (batch.modality[:, 1:] == Modality.TEXT)

    def mean(where: Tensor) -> Tensor:
        return (nll * where).sum() / where.sum().clamp_min(1)

    return {"loss": mean(real), "image_loss": mean(image), "text_loss": mean(text),
            "n_image": image.sum(), "n_text": text.sum(), "n_all": real.sum()}


class LMModule(pl.LightningModule):
    """A :class:`MultimodalLM` trained with the next-token loss on stream batches.

    Args:
        config: the model's architecture; ``vocab_size`` must equal the vocabulary's size
            (the CLI links it from the data).
        image_codebook_size: the tokenizer's codebook size (the CLI links it from the data).
        text_vocab: text ids (256 UTF-8 bytes).
        lr: peak AdamW learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay on matrices (not on norms).
        warmup_steps: linear warm-up steps, then cosine decay to ``min_lr_ratio * lr`` at the
            trainer's last step.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
    """

    def __init__(self, config: LMConfig, image_codebook_size: int, text_vocab: int = 256,
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.1, warmup_steps: int = 100,
                 min_lr_ratio: float = 0.1) -> None:
        super().__init__()
        config = config if isinstance(config, LMConfig) else LMConfig.from_dict(config)
        self.vocab = Vocabulary(text_vocab, image_codebook_size=image_codebook_size)
        if config.vocab_size != self.vocab.size:
            raise ValueError(f"config.vocab_size {config.vocab_size} != the size "
                             f"{self.vocab.size} of the vocabulary ({self.vocab})")
        self.save_hyperparameters(ignore=["config"])
        # Plain numbers and strings only: the checkpoint loads with weights_only=True.
        self.hparams.pop("_instantiator", None)
        self.hparams.pop("_class_path", None)
        self.hparams["config"] = config.to_dict()
        self.model = MultimodalLM(config)

    @classmethod
    def from_vocabulary(cls, vocab: Vocabulary, **kwargs: Any) -> LMModule:
        """A module for ``vocab`` whose ``config`` fields other than ``vocab_size`` are
        given as keyword arguments (next to the training ones, e.g. ``lr``)."""
        names = set(LMConfig.__dataclass_fields__) - {"vocab_size"}
        arch = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        return cls(LMConfig(vocab_size=vocab.size, **arch), vocab.image_codebook_size,
                   vocab.text_vocab, **kwargs)

    @property
    def config(self) -> LMConfig:
        return self.model.config

    def forward(self, batch: StreamBatch) -> Tensor:
        """Logits ``(B, T, vocab_size)`` of a padded stream batch."""
        return self.model(batch.ids, batch.positions, batch.mask)

    def setup(self, stage: str) -> None:
        """Refuse a DataModule whose vocabulary or position scheme is not the model's."""
        data = self.trainer.datamodule  # None when fit was given dataloaders
        if data is None:
            return
        vocab, scheme = getattr(data, "vocab", None), getattr(data, "position_scheme", None)
        if vocab is not None and vocab.size != self.vocab.size:
            raise ValueError(f"the data's vocabulary ({vocab}) does not match the model's "
                             f"({self.vocab})")
        if scheme is not None and scheme != self.config.position_scheme:
            raise ValueError(f"the data's position_scheme {scheme!r} differs from the "
                             f"model's {self.config.position_scheme!r}")

    def export(self, out_dir: str | Path, datamodule: CaptionImageDataModule,
               extra: dict | None = None) -> Path:
        """Write the LM directory with what the data knows: the token grid, the
        caption template and class names, and which tokenizer made the tokens (plus any
        ``extra`` JSON metadata)."""
        extra = {
            "labels": list(datamodule.class_names),
            "tokenizer": {"path": str(datamodule.tokenizer_dir), "sha256": datamodule.fingerprint},
            **(extra or {}),
        }
        return save_lm_dir(self.model, self.vocab, out_dir, datamodule.image_tokens,
                           caption_template=datamodule.caption_template, extra=extra,
                           video_tokens=getattr(datamodule, "video_tokens", None))

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
        self.log(f"{stage}/text_loss", terms["text_loss"], batch_size=int(terms["n_text"]),
                 sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return adamw_warmup_cosine(
            self.model.named_parameters(), lr=hp.lr, betas=hp.betas,
            weight_decay=hp.weight_decay, warmup_steps=hp.warmup_steps,
            total_steps=int(self.trainer.estimated_stepping_batches),
            min_lr_ratio=hp.min_lr_ratio)
