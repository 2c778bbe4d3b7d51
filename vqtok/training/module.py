"""The LightningModule that trains an image or video tokenizer.

It receives encoder, quantizer and decoder as modules (LightningCLI ``class_path`` /
``init_args``), so any quantizer is swapped from the config alone. With a
:class:`~vqtok.models.VideoEncoder` and :class:`~vqtok.models.VideoDecoder` the batches
are clips ``(B, C, T, H, W)``; their frames are then the images of the PSNR and SSIM
metrics (SSIM per frame, PSNR of the mean squared error over all pixels, as for images),
and the export writes a video tokenizer (docs/video.md). Two options change how it trains
(docs/training.md#adversarial-training):

- a ``discriminator``: the autoencoder also learns to fool a patch discriminator, with
  VQGAN's adaptive weight (Esser et al. 2021, eq. 7). The module then optimises by hand
  (Lightning's manual optimisation) with two optimizers, one step of each per batch.
- ``ema_decay``: an exponential moving average of the autoencoder's weights
  (``torch.optim.swa_utils.AveragedModel``), which export writes instead of the raw weights.

Without them training is the plain path: one optimizer, Lightning's automatic optimisation.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from vqtok import registry
from vqtok.formats.tokenizer_dir import save_tokenizer_dir
from vqtok.metrics import CodebookUsage
from vqtok.models import AutoencoderOutput, VQAutoencoder
from vqtok.models.adversarial import (
    LeCam,
    adaptive_weight,
    check_gan_loss,
    discriminator_loss,
    generator_loss,
)
from vqtok.models.lpips import LPIPS
from vqtok.quantizers import Quantizer
from vqtok.tokenizers.pixels import DEFAULT_NORMALIZATION, Normalization
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
        discriminator: a discriminator (e.g. :class:`~vqtok.models.PatchDiscriminator`)
            for adversarial training; ``None`` (default) trains without one.
        gan_loss: ``"hinge"`` or ``"non_saturating"`` (:mod:`vqtok.models.adversarial`).
        disc_weight: factor on VQGAN's adaptive weight of the generator's GAN term.
        disc_start: the step from which the GAN term is on and the discriminator trains.
        disc_lr: the discriminator's Adam learning rate (default: ``lr``), constant.
        disc_betas: the discriminator's Adam betas.
        adaptive_weight_max: the adaptive weight is clamped to ``[0, adaptive_weight_max]``.
        lecam_weight: weight of LeCam regularisation on the discriminator (0: off).
        lecam_decay: decay of the moving averages LeCam anchors to.
        ema_decay: keep an exponential moving average of the autoencoder's weights with this
            decay (e.g. 0.999; warmed up at the start, :func:`_ema_update`), updated after
            every optimizer step; ``None``: no average.
        export_ema: export the averaged weights when there are any (the default), else the
            raw ones.
        lpips_weights: the LPIPS weights file (``vqtok lpips convert``, docs/training.md#lpips)
            for a perceptual term ``perceptual_weight * LPIPS(x_hat, x)`` among the
            reconstruction terms; ``None`` (default): no perceptual term. Read when training
            starts (a missing or foreign file stops it with a one-line error that says how to
            make one); the network is frozen and never saved in checkpoints or exports.
        perceptual_weight: the perceptual term's weight (VQGAN uses 1.0).

    Encoder, quantizer, decoder and discriminator may also be given as
    ``{"class_path", "init_args"}`` dicts (what checkpoints store), which are rebuilt from
    :mod:`vqtok.registry` only.
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
        discriminator: nn.Module | None = None,
        gan_loss: str = "hinge",
        disc_weight: float = 0.8,
        disc_start: int = 0,
        disc_lr: float | None = None,
        disc_betas: tuple[float, float] = (0.5, 0.9),
        adaptive_weight_max: float = 1e4,
        lecam_weight: float = 0.0,
        lecam_decay: float = 0.99,
        ema_decay: float | None = None,
        export_ema: bool = True,
        lpips_weights: str | None = None,
        perceptual_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss must be one of {RECON_LOSSES}, got {recon_loss!r}")
        check_gan_loss(gan_loss)
        for name, value in (("disc_weight", disc_weight), ("disc_start", disc_start),
                            ("adaptive_weight_max", adaptive_weight_max),
                            ("lecam_weight", lecam_weight),
                            ("perceptual_weight", perceptual_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if disc_lr is not None and not disc_lr > 0:
            raise ValueError(f"disc_lr must be > 0, got {disc_lr!r}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or null, got {ema_decay!r}")
        encoder, quantizer, decoder = (
            m if isinstance(m, nn.Module) else registry.build(m)
            for m in (encoder, quantizer, decoder)
        )
        if discriminator is not None and not isinstance(discriminator, nn.Module):
            discriminator = registry.build(discriminator)
        self.save_hyperparameters(ignore=["encoder", "quantizer", "decoder", "discriminator"])
        # Checkpoints hold registry specs, never module objects: they load with
        # torch.load(weights_only=True) and rebuild through the registry alone.
        self.hparams.pop("_instantiator", None)
        self.hparams.pop("_class_path", None)
        for name, module in (("encoder", encoder), ("quantizer", quantizer), ("decoder", decoder)):
            self.hparams[name] = registry.spec_of(module)
        self.hparams["discriminator"] = (None if discriminator is None
                                         else registry.spec_of(discriminator))
        self.model = VQAutoencoder(encoder, quantizer, decoder)
        # Beside the autoencoder, never inside it: export writes self.model (or its average)
        # alone, so no discriminator weight reaches a tokenizer directory.
        self.discriminator = discriminator
        self.lecam = LeCam(lecam_decay) if discriminator is not None and lecam_weight > 0 else None
        if discriminator is not None:
            if not isinstance(getattr(decoder, "last_layer", None), nn.Parameter):
                raise ValueError(f"adversarial training needs the decoder's output weight for "
                                 f"the adaptive weight; {type(decoder).__name__} has no "
                                 f"last_layer parameter")
            channels = getattr(discriminator, "in_channels", encoder.in_channels)
            if channels != encoder.in_channels:
                raise ValueError(f"the discriminator reads {channels}-channel images but the "
                                 f"encoder {encoder.in_channels}-channel ones")
            self.automatic_optimization = False  # two optimizers, stepped in training_step
        self.ema: AveragedModel | None = None
        if ema_decay is not None:
            self.ema = AveragedModel(self.model, multi_avg_fn=_ema_update(ema_decay),
                                     use_buffers=True)
            self.ema.requires_grad_(False)
            self._ema_seen_step = -1
        if normalization is not None:
            Normalization(**normalization)  # validates
        self.recon_loss = recon_loss
        # Held outside the module tree: no state_dict, no DDP buffer broadcast, no optimizer.
        object.__setattr__(self, "_lpips", None)
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
        """Record the DataModule's pixel normalisation unless one was given; check that the
        discriminator can read the DataModule's images."""
        found = getattr(self.trainer.datamodule, "normalization", None)
        if self.hparams.get("normalization") is None and isinstance(found, Normalization):
            self.hparams["normalization"] = found.as_dict()
        if stage == "fit":
            self.perceptual_network()  # a missing weights file stops the run before step 0
            if self.discriminator is not None:
                self._prepare_adversarial_ddp()
        # Fail now rather than at disc_start, possibly hours in.
        size = getattr(self.trainer.datamodule, "image_size", None)
        smallest = getattr(self.discriminator, "min_size", None)
        if isinstance(size, int) and isinstance(smallest, int) and size < smallest:
            raise ValueError(f"training images of {size} pixels are too small for the "
                             f"discriminator (at least {smallest} pixels a side); lower its "
                             f"n_layers")

    def _prepare_adversarial_ddp(self) -> None:
        """Make the adversarial step train under DDP (docs/training.md#several-processes).

        Each batch runs two backward passes, and neither uses every parameter: the
        autoencoder's pass leaves the discriminator without gradients (toggled off), the
        discriminator's pass reads detached reconstructions, and before ``disc_start`` the
        discriminator takes no part at all. DDP must therefore look for the parameters each
        pass used (``find_unused_parameters``); Lightning prepares DDP before every manual
        backward so that each pass all-reduces its own parameters' gradients. The
        discriminator's buffers are averaged over ranks after each step
        (:meth:`_average_over_ranks`)."""
        strategy = self.trainer.strategy
        if not isinstance(strategy, DDPStrategy) or self.trainer.world_size < 2:
            return
        ddp_kwargs = getattr(strategy, "_ddp_kwargs", None)
        if not isinstance(ddp_kwargs, dict):
            raise TypeError(f"adversarial training under {type(strategy).__name__} needs DDP's "
                            f"find_unused_parameters: pass "
                            f"--trainer.strategy=ddp_find_unused_parameters_true")
        ddp_kwargs["find_unused_parameters"] = True

    @property
    def export_model(self) -> VQAutoencoder:
        """What export writes: the weights' moving average when there is one and
        ``export_ema`` is on, else the trained autoencoder."""
        if self.ema is not None and self.hparams.get("export_ema", True):
            return self.ema.module
        return self.model

    def export(self, out_dir: str | Path, datamodule: object = None) -> Path:
        """Write the autoencoder as a tokenizer directory (nothing else of the module: no
        discriminator, no optimizer state)."""
        return save_tokenizer_dir(self.export_model, out_dir, normalization=self.normalization)

    def forward(self, x: Tensor) -> AutoencoderOutput:
        return self.model(x)

    # ---- losses ------------------------------------------------------------------------
    def reconstruction_terms(self, x: Tensor, x_hat: Tensor) -> dict[str, Tensor]:
        """The terms comparing the reconstruction with the input: the pixel loss. A
        perceptual loss belongs here too; the adaptive GAN weight balances the GAN term
        against the sum of these terms (Esser et al. 2021, eq. 7)."""
        recon = F.l1_loss(x_hat, x) if self.recon_loss == "l1" else F.mse_loss(x_hat, x)
        terms = {"recon": recon}
        net = self.perceptual_network()
        if net is not None:
            net = net.to(x.device)
            distance = net(self._lpips_input(x_hat), self._lpips_input(x))  # (B,)
            terms["perceptual"] = self.hparams.get("perceptual_weight", 1.0) * distance.mean()
        return terms

    def perceptual_network(self) -> LPIPS | None:
        """The frozen LPIPS network of ``lpips_weights`` (read on first use), or None."""
        path = self.hparams.get("lpips_weights")
        if path is not None and self._lpips is None:
            object.__setattr__(self, "_lpips", LPIPS.from_file(path))
        return self._lpips

    def _lpips_input(self, x: Tensor) -> Tensor:
        """Model-space images (any normalisation; grey, RGB; clips ``(B, C, T, H, W)``
        frame by frame) -> the ``(N, 3, H, W)`` [-1, 1] RGB batch LPIPS reads."""
        if x.ndim == 5:
            x = x.transpose(1, 2).flatten(0, 1)  # (B * T, C, H, W)
        norm = self.normalization
        x = (x * norm.std + norm.mean) * 2.0 - 1.0
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def compute_losses(self, x: Tensor, out: AutoencoderOutput) -> dict[str, Tensor]:
        """Named terms, their sum under ``"loss"``, and the sum of the reconstruction terms
        alone under ``"reconstruction"`` (for the adaptive weight; not a term of its own)."""
        rec_terms = self.reconstruction_terms(x, out.x_hat.float())
        terms = dict(rec_terms)
        for name, value in out.quant.losses.items():
            terms[name] = self.loss_weights.get(name, 1.0) * value
        terms["loss"] = sum(terms.values())
        terms["reconstruction"] = sum(rec_terms.values())
        return terms

    @staticmethod
    def images_of(batch: Any) -> Tensor:
        """Datasets yield ``(image, label)``; plain tensors are accepted too."""
        return batch[0] if isinstance(batch, (tuple, list)) else batch

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self.images_of(batch)
        out = self.model(x)
        terms = self.compute_losses(x, out)
        rec = terms.pop("reconstruction")
        loss = terms.pop("loss")
        # A reference, no copy: CodebookHistory reads it for its per-batch usage curve.
        self.last_train_indices = out.quant.indices.detach()
        if self.discriminator is not None:
            loss = self._adversarial_step(x, out.x_hat.float(), loss, rec, terms)
        self.log_dict({f"train/{k}": v for k, v in terms.items()})
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _adversarial_step(self, x: Tensor, x_hat: Tensor, loss: Tensor, rec: Tensor,
                          logs: dict[str, Tensor]) -> Tensor:
        """One step of each optimizer (docs/training.md#adversarial-training): the
        autoencoder on ``loss`` plus the weighted GAN term, then the discriminator on the
        same (detached) reconstructions. Before ``disc_start`` only the first step runs.
        Adds its terms to ``logs``; returns the autoencoder's total loss."""
        hp = self.hparams
        opt_ae, opt_d = self.optimizers()
        active = self.global_step >= hp.disc_start
        if active:
            self.toggle_optimizer(opt_ae)  # no gradients into the discriminator here
            g_loss = generator_loss(hp.gan_loss, self.discriminator(x_hat))
            weight = hp.disc_weight * adaptive_weight(rec, g_loss, self.model.decoder.last_layer,
                                                      hp.adaptive_weight_max)
            loss = loss + weight * g_loss
            logs.update(g_loss=g_loss.detach(), adaptive_weight=weight)
        opt_ae.zero_grad()
        self.manual_backward(loss)
        opt_ae.step()
        if active:
            self.untoggle_optimizer(opt_ae)
        self.lr_schedulers().step()
        if not active:
            return loss.detach()

        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(x_hat.detach())
        d_loss = discriminator_loss(hp.gan_loss, logits_real, logits_fake)
        logs.update(d_loss=d_loss.detach(), logits_real=logits_real.detach().float().mean(),
                    logits_fake=logits_fake.detach().float().mean())
        if self.lecam is not None:
            self.lecam.update(logits_real, logits_fake)
            penalty = self.lecam(logits_real, logits_fake)
            logs["lecam"] = penalty.detach()
            d_loss = d_loss + hp.lecam_weight * penalty
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        # Through the strategy (precision plugin included) rather than opt_d.step(): in
        # manual optimisation Lightning counts every LightningOptimizer step as a global
        # step, and a batch must count once for max_steps, disc_start and checkpoints.
        self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=_no_closure)
        self._average_over_ranks(self.discriminator, self.lecam)
        return loss.detach()

    @torch.no_grad()
    def _average_over_ranks(self, *modules: nn.Module | None) -> None:
        """Average the floating-point buffers of ``modules`` over the ranks (in place).

        Each rank's discriminator updates its batch-norm running statistics, and LeCam its
        anchors, from its own share of the batch. Both are exponential moving averages, so
        their mean over ranks is the average taken over the whole batch (exactly for means;
        a running variance becomes the mean of the ranks' variances, without the spread
        between the ranks' means); every rank then holds the same values. (Torch's
        ``SyncBatchNorm``, which normalises with whole-batch statistics, runs on GPUs only.)
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        buffers = [b for m in modules if m is not None for b in m.buffers()
                   if torch.is_floating_point(b)]
        if not buffers:
            return
        flat = torch.cat([b.reshape(-1).float() for b in buffers])  # one all-reduce for all
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for b, mean in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
            b.copy_(mean.view_as(b))

    def on_train_start(self) -> None:
        if self.ema is not None:
            self._ema_seen_step = self.trainer.global_step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # After each optimizer step (not after batches that only accumulate gradients).
        if self.ema is not None and self.trainer.global_step != self._ema_seen_step:
            self._ema_seen_step = self.trainer.global_step
            self.ema.update_parameters(self.model)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: Any, stage: str) -> None:
        x = self.images_of(batch)
        out = self.model(x)
        terms = self.compute_losses(x, out)
        terms.pop("reconstruction")
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
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        total = 1  # the schedule's length only matters when it decays
        if hp.min_lr_ratio < 1:
            estimated = self.trainer.estimated_stepping_batches
            total = int(estimated) if math.isfinite(estimated) else 1
        autoencoder = adamw_warmup_cosine(
            self.model.named_parameters(), lr=hp.lr, betas=hp.betas,
            weight_decay=hp.weight_decay, warmup_steps=hp.warmup_steps, total_steps=total,
            min_lr_ratio=hp.min_lr_ratio,
            no_decay=lambda name, p: name.startswith("quantizer."))
        if self.discriminator is None:
            return autoencoder
        disc = torch.optim.Adam(self.discriminator.parameters(), lr=hp.disc_lr or hp.lr,
                                betas=tuple(hp.disc_betas))
        return [autoencoder["optimizer"], disc], [autoencoder["lr_scheduler"]]


def _no_closure() -> None:
    """The closure of an optimizer step whose gradients are already computed."""


def _ema_update(decay: float) -> Any:
    """``AveragedModel``'s update: ``W <- d W + (1 - d) W_model`` on floating-point tensors,
    with the decay warmed up as TensorFlow's ``ExponentialMovingAverage(num_updates=n)``
    does, ``d = min(decay, (1 + n) / (10 + n))`` for the ``n``-th update after the first
    (which copies), so the first weights do not linger in a short run. Other tensors (step
    counters, flags, integer levels) are copied: an average of them means nothing."""

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            n = float(num_averaged)
            weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
            for a, c in zip(averaged, current, strict=True):
                a.lerp_(c, weight)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update
