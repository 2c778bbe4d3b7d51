"""The LightningModule that trains an image tokenizer.

It receives encoder, quantizer and decoder as modules (LightningCLI ``class_path`` /
``init_args``), so any quantizer is swapped from the config alone (STYLE.md rule 4).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from vqtok import registry
from vqtok.metrics import CodebookUsage
from vqtok.models import AutoencoderOutput, VQAutoencoder
from vqtok.quantizers import Quantizer

RECON_LOSSES = ("l1", "mse")


class TokenizerModule(pl.LightningModule):
    """Encoder -> quantizer -> decoder trained on reconstruction + the quantizer's losses.

    Args:
        encoder: image ``(B, C, H, W)`` in [-1, 1] -> features ``(B, D, h, w)``.
        quantizer: any :class:`~vqtok.quantizers.Quantizer`.
        decoder: features ``(B, D, h, w)`` -> image ``(B, C, H, W)``.
        recon_loss: ``"l1"`` or ``"mse"`` between the reconstruction and the input.
        loss_weights: extra multiplier per named quantizer loss (e.g. ``{"commitment": 2.0}``);
            names not given keep weight 1 (the quantizer already applies its own weights).
        lr: AdamW learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay (not applied to the codebook or norms).
        warmup_steps: linear learning-rate warm-up, then constant.

    Encoder, quantizer and decoder may also be given as ``{"class_path", "init_args"}``
    dicts (what checkpoints store), which are rebuilt from :mod:`vqtok.registry` only.
    """

    def __init__(
        self,
        encoder: nn.Module,
        quantizer: Quantizer,
        decoder: nn.Module,
        recon_loss: str = "l1",
        loss_weights: dict[str, float] | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss must be one of {RECON_LOSSES}, got {recon_loss!r}")
        encoder, quantizer, decoder = (
            m if isinstance(m, nn.Module) else registry.build(m) for m in (encoder, quantizer, decoder)
        )
        self.save_hyperparameters(ignore=["encoder", "quantizer", "decoder"])
        # Checkpoints hold registry specs, never module objects: they load with
        # torch.load(weights_only=True) and rebuild through the registry alone.
        self.hparams.pop("_instantiator", None)
        self.hparams.pop("_class_path", None)
        for name, module in (("encoder", encoder), ("quantizer", quantizer), ("decoder", decoder)):
            self.hparams[name] = registry.spec_of(module)
        self.model = VQAutoencoder(encoder, quantizer, decoder)
        self.recon_loss = recon_loss
        self.loss_weights = dict(loss_weights or {})
        self.val_psnr = PeakSignalNoiseRatio(data_range=2.0)
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=2.0)
        self.val_usage = CodebookUsage(quantizer.codebook_size)

    @property
    def quantizer(self) -> Quantizer:
        return self.model.quantizer

    def forward(self, x: Tensor) -> AutoencoderOutput:
        return self.model(x)

    # ---- losses ------------------------------------------------------------------------
    def compute_losses(self, x: Tensor, out: AutoencoderOutput) -> dict[str, Tensor]:
        """Named terms and their sum under ``"loss"``."""
        x_hat = out.x_hat.float()
        recon = F.l1_loss(x_hat, x) if self.recon_loss == "l1" else F.mse_loss(x_hat, x)
        terms = {"recon": recon}
        for name, value in out.quant.losses.items():
            terms[name] = self.loss_weights.get(name, 1.0) * value
        terms["loss"] = sum(terms.values())
        return terms

    @staticmethod
    def images_of(batch: Any) -> Tensor:
        """Datasets yield ``(image, label)``; plain tensors are accepted too."""
        return batch[0] if isinstance(batch, (tuple, list)) else batch

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self.images_of(batch)
        out = self.model(x)
        terms = self.compute_losses(x, out)
        loss = terms.pop("loss")
        # A reference, no copy: CodebookHistory reads it for its per-batch usage curve.
        self.last_train_indices = out.quant.indices.detach()
        self.log_dict({f"train/{k}": v for k, v in terms.items()})
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: Any, stage: str) -> None:
        x = self.images_of(batch)
        out = self.model(x)
        terms = self.compute_losses(x, out)
        x_hat = out.x_hat.float().clamp(-1.0, 1.0)
        self.val_psnr.update(x_hat, x)
        self.val_ssim.update(x_hat, x)
        self.val_usage.update(out.quant.indices)
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def _log_epoch_metrics(self, stage: str) -> None:
        # Usage over the whole validation set, not per batch (DESIGN.md section 3).
        stats = self.val_usage.compute()
        self.log(f"{stage}/psnr", self.val_psnr.compute(), prog_bar=True)
        self.log(f"{stage}/ssim", self.val_ssim.compute())
        self.log(f"{stage}/usage", stats["usage"], prog_bar=True)
        self.log(f"{stage}/perplexity", stats["perplexity"])
        self.log(f"{stage}/dead_codes", stats["dead_codes"].float())
        self.log(f"{stage}/normalized_entropy", stats["normalized_entropy"])
        # Inside the metric's sync so the counts are summed over ranks (torchmetrics
        # restores the local counts after compute()); CodebookHistory records them.
        with self.val_usage.sync_context(dist_sync_fn=self.val_usage.dist_sync_fn):
            self.last_usage_counts = self.val_usage.counts.detach().clone()
        for metric in (self.val_psnr, self.val_ssim, self.val_usage):
            metric.reset()

    # ---- optimisation ------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            is_codebook = name.startswith("quantizer.")
            (no_decay if is_codebook or param.ndim < 2 else decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr, betas=tuple(self.hparams.betas))
        warmup = max(0, int(self.hparams.warmup_steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
