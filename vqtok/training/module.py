"""The LightningModule that trains an image or video tokenizer.

It receives encoder, quantizer and decoder as modules (LightningCLI ``class_path`` /
``init_args``), so any quantizer is swapped from the config alone. With a
:class:`~vqtok.models.VideoEncoder` and :class:`~vqtok.models.VideoDecoder` the batches
are clips ``(B, C, T, H, W)``; their frames are then the images of the PSNR and SSIM
metrics (SSIM per frame, PSNR of the mean squared error over all pixels, as for images),
and the export writes a video tokenizer (docs/video.md).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from vqtok import registry
from vqtok.formats.images import DEFAULT_NORMALIZATION, Normalization
from vqtok.formats.tokenizer_dir import save_tokenizer_dir
from vqtok.metrics import CodebookUsage
from vqtok.models import AutoencoderOutput, VQAutoencoder
from vqtok.quantizers import Quantizer
from vqtok.training.optim import adamw_warmup_cosine

RECON_LOSSES = ("l1", "mse")


class TokenizerModule(pl.LightningModule):
    """Encoder -> quantizer -> decoder trained on reconstruction + the quantizer's losses.

    Args:
        encoder: image ``(B, C, H, W)`` in [-1, 1] -> features ``(B, D, h, w)`` (or clip
            ``(B, C, T, H, W)`` -> ``(B, D, t, h, w)``).
        quantizer: any :class:`~vqtok.quantizers.Quantizer`.
        decoder: features -> image (or clip), the encoder's input shape.
        recon_loss: ``"l1"`` or ``"mse"`` between the reconstruction and the input.
        loss_weights: extra multiplier per named quantizer loss (e.g. ``{"commitment": 2.0}``);
            names not given keep weight 1 (the quantizer already applies its own weights).
        lr: AdamW learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay on the encoder's and decoder's weight matrices (not
            on biases, norms or any quantizer parameter: codebooks, SimVQ's map, FSQ's
            projections).
        warmup_steps: linear learning-rate warm-up steps.
        min_lr_ratio: after the warm-up, half a cosine down to ``min_lr_ratio * lr`` at the
            trainer's last step; 1 (the default) keeps the rate constant.
        normalization: ``{"mean", "std"}`` of the pixels the model sees; by default the
            DataModule's (every vqtok DataModule has one), recorded in checkpoints and
            written into the exported tokenizer.

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
        min_lr_ratio: float = 1.0,
        normalization: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss must be one of {RECON_LOSSES}, got {recon_loss!r}")
        encoder, quantizer, decoder = (
            m if isinstance(m, nn.Module) else registry.build(m)
            for m in (encoder, quantizer, decoder)
        )
        self.save_hyperparameters(ignore=["encoder", "quantizer", "decoder"])
        # Checkpoints hold registry specs, never module objects: they load with
        # torch.load(weights_only=True) and rebuild through the registry alone.
        self.hparams.pop("_instantiator", None)
        self.hparams.pop("_class_path", None)
        for name, module in (("encoder", encoder), ("quantizer", quantizer), ("decoder", decoder)):
            self.hparams[name] = registry.spec_of(module)
        self.model = VQAutoencoder(encoder, quantizer, decoder)
        if normalization is not None:
            Normalization(**normalization)  # validates
        self.recon_loss = recon_loss
        self.loss_weights = dict(loss_weights or {})
        self.val_psnr = PeakSignalNoiseRatio(data_range=2.0)
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=2.0)
        self.val_usage = CodebookUsage(quantizer.codebook_size, quantizer.num_stages)

    @property
    def quantizer(self) -> Quantizer:
        return self.model.quantizer

    @property
    def normalization(self) -> Normalization:
        """The pixel normalisation of the training data (class doc)."""
        given = self.hparams.get("normalization")
        return DEFAULT_NORMALIZATION if given is None else Normalization(**given)

    def setup(self, stage: str) -> None:
        """Record the DataModule's pixel normalisation unless one was given."""
        found = getattr(self.trainer.datamodule, "normalization", None)
        if self.hparams.get("normalization") is None and isinstance(found, Normalization):
            self.hparams["normalization"] = found.as_dict()

    def export(self, out_dir: str | Path, datamodule: object = None) -> Path:
        """Write the autoencoder as a tokenizer directory (nothing else of the module)."""
        return save_tokenizer_dir(self.model, out_dir, normalization=self.normalization)

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
        if x.ndim == 5:  # clips: every frame an image (torchmetrics' SSIM of a 5-D input
            # would be the volumetric SSIM across frames)
            x, x_hat = (rearrange(v, "b c t h w -> (b t) c h w") for v in (x, x_hat))
        self.val_psnr.update(x_hat, x)
        self.val_ssim.update(x_hat, x)
        self.val_usage.update(out.quant.indices)
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def _log_epoch_metrics(self, stage: str) -> None:
        # Usage over the whole validation set, not per batch (docs/algorithms.md#codebook-usage).
        # compute() sums the metrics' states over ranks first, so every rank logs the same
        # values; sync_dist then averages equal numbers (no change), and says so to Lightning.
        stats = self.val_usage.compute()
        log = functools.partial(self.log, sync_dist=True)
        log(f"{stage}/psnr", self.val_psnr.compute(), prog_bar=True)
        log(f"{stage}/ssim", self.val_ssim.compute())
        log(f"{stage}/usage", stats["usage"], prog_bar=True)
        log(f"{stage}/perplexity", stats["perplexity"])
        log(f"{stage}/dead_codes", stats["dead_codes"].float())
        log(f"{stage}/normalized_entropy", stats["normalized_entropy"])
        # Inside the metric's sync so the counts are summed over ranks (torchmetrics
        # restores the local counts after compute()); CodebookHistory records them.
        with self.val_usage.sync_context(dist_sync_fn=self.val_usage.dist_sync_fn):
            self.last_usage_counts = self.val_usage.counts.detach().clone()
            if self.quantizer.num_stages is not None:  # each stage's own usage too
                for s, stage_stats in enumerate(self.val_usage.stage_stats()):
                    log(f"{stage}/usage/stage{s}", stage_stats["usage"])
                    log(f"{stage}/perplexity/stage{s}", stage_stats["perplexity"])
        for metric in (self.val_psnr, self.val_ssim, self.val_usage):
            metric.reset()

    # ---- optimisation ------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        total = 1  # the schedule's length only matters when it decays
        if hp.min_lr_ratio < 1:
            estimated = self.trainer.estimated_stepping_batches
            total = int(estimated) if math.isfinite(estimated) else 1
        return adamw_warmup_cosine(
            self.model.named_parameters(), lr=hp.lr, betas=hp.betas,
            weight_decay=hp.weight_decay, warmup_steps=hp.warmup_steps, total_steps=total,
            min_lr_ratio=hp.min_lr_ratio,
            no_decay=lambda name, p: name.startswith("quantizer."))
