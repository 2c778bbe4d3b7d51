"""The LightningModule that trains an image or video tokenizer.

It receives encoder, quantizer and decoder as modules (LightningCLI ``class_path`` /
``init_args``), so any quantizer is swapped from the config alone. With a
:class:`~vqtok.models.VideoEncoder` and :class:`~vqtok.models.VideoDecoder` the batches
are clips ``(B, C, T, H, W)``; their frames are then the images of the PSNR and SSIM
metrics (SSIM per frame, PSNR of the mean squared error over all pixels, as for images),
and the export writes a video tokenizer (docs/video.md).

What it trains on is composed from objectives (:mod:`vqtok.training.objectives`,
docs/training.md#objectives), named in the config like the networks:

- ``reconstruction``: a :class:`~vqtok.training.objectives.Reconstruction` (pixel loss,
  optionally LPIPS); the quantizer's own losses are added to it.
- ``adversarial``: an :class:`~vqtok.training.objectives.Adversarial` (a discriminator with
  VQGAN's adaptive weight, Esser et al. 2021, eq. 7). The module then optimises by hand
  (Lightning's manual optimisation) with two optimizers, one step of each per batch.

Without ``adversarial`` training is the plain path: one optimizer, Lightning's automatic
optimisation. A moving average of the weights is a callback
(:class:`~vqtok.training.callbacks.WeightEMA`), which hands its average to
:meth:`TokenizerModule.use_for_export`.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from einops import rearrange
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from vqtok import registry
from vqtok.formats.tokenizer_dir import load_tokenizer_dir, save_tokenizer_dir
from vqtok.metrics import CodebookUsage
from vqtok.models import AutoencoderOutput, VQAutoencoder
from vqtok.quantizers import Quantizer
from vqtok.tokenizers.pixels import DEFAULT_NORMALIZATION, Normalization
from vqtok.training.objectives import Adversarial, Reconstruction, build_spec, spec_of
from vqtok.training.optim import AdamWConfig, adamw_warmup_cosine


class TokenizerModule(pl.LightningModule):
    """Encoder -> quantizer -> decoder trained on its objectives + the quantizer's losses.

    Args:
        encoder: image ``(B, C, H, W)`` in [-1, 1] -> features ``(B, D, h, w)`` (or clip
            ``(B, C, T, H, W)`` -> ``(B, D, t, h, w)``).
        quantizer: any :class:`~vqtok.quantizers.Quantizer`.
        decoder: features -> image (or clip), the encoder's input shape.
        reconstruction: the reconstruction terms
            (:class:`~vqtok.training.objectives.Reconstruction`); ``None``: its defaults,
            an L1 pixel loss alone.
        adversarial: an :class:`~vqtok.training.objectives.Adversarial` objective for
            adversarial training; ``None`` (default) trains without a discriminator.
        loss_weights: extra multiplier per named quantizer loss (e.g. ``{"commitment": 2.0}``);
            names not given keep weight 1 (the quantizer already applies its own weights).
        optimizer: the autoencoder's AdamW and learning-rate schedule
            (:class:`~vqtok.training.optim.AdamWConfig`: ``lr``, ``betas``, ``weight_decay``,
            ``warmup_steps``, ``min_lr_ratio``); ``None``: its defaults.
        normalization: ``{"mean", "std"}`` of the pixels the model sees; by default the
            DataModule's (every vqtok DataModule has one), recorded in checkpoints and
            written into the exported tokenizer.
        init_from: a tokenizer directory (or Hub repo id) to start from, such as one
            written by ``vqtok convert`` (docs/interop.md#fine-tuning): its modules are
            used where ``encoder``, ``quantizer`` or ``decoder`` is not given, and all its
            weights are loaded, the codebook included; its normalisation is used unless
            ``normalization`` is given. The optimizers, the discriminator and the
            learning-rate schedule start afresh.

    Every module argument (networks and objectives) may also be given as a
    ``{"class_path", "init_args"}`` dict (what checkpoints store), rebuilt from
    :mod:`vqtok.registry` only.
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        quantizer: Quantizer | None = None,
        decoder: nn.Module | None = None,
        reconstruction: Reconstruction | None = None,
        adversarial: Adversarial | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: AdamWConfig | None = None,
        normalization: dict[str, float] | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        encoder, quantizer, decoder = (build_spec(m) for m in (encoder, quantizer, decoder))
        start = None
        if init_from is not None:  # docs/interop.md#fine-tuning
            start, start_normalization = _tokenizer_start(init_from)
            encoder, quantizer, decoder = (
                given if given is not None else getattr(start, role) for given, role in
                ((encoder, "encoder"), (quantizer, "quantizer"), (decoder, "decoder")))
            normalization = start_normalization if normalization is None else normalization
        if encoder is None or quantizer is None or decoder is None:
            raise ValueError("give encoder, quantizer and decoder, or init_from (a tokenizer "
                             "directory to start from)")
        reconstruction = Reconstruction() if reconstruction is None else build_spec(
            reconstruction)
        adversarial = build_spec(adversarial)
        optimizer = AdamWConfig.build(optimizer)
        self.save_hyperparameters(ignore=["encoder", "quantizer", "decoder", "reconstruction",
                                          "adversarial"])
        # Checkpoints hold registry specs, never objects: they load with
        # torch.load(weights_only=True) and rebuild through the registry alone.
        self.hparams.pop("_instantiator", None)
        self.hparams.pop("_class_path", None)
        for name, part in (("encoder", encoder), ("quantizer", quantizer), ("decoder", decoder),
                           ("reconstruction", reconstruction)):
            self.hparams[name] = registry.spec_of(part)
        self.hparams["adversarial"] = None if adversarial is None else spec_of(adversarial)
        self.hparams["optimizer"] = optimizer.as_dict()
        self.model = VQAutoencoder(encoder, quantizer, decoder)
        if start is not None:
            _load_start(self.model, start, init_from)
            # The modules' specs above now describe the model: a checkpoint of this run
            # rebuilds from them and its own weights, without the directory.
            self.hparams["init_from"] = None
        self.reconstruction = reconstruction
        # Beside the autoencoder, never inside it: export writes self.model (or the average
        # handed to use_for_export) alone, so no discriminator weight reaches a tokenizer.
        self.adversarial = adversarial
        if adversarial is not None:
            adversarial.check(encoder.in_channels, getattr(decoder, "last_layer", None),
                              type(decoder).__name__)
            self.automatic_optimization = False  # two optimizers, stepped in training_step
        self._normalization = (DEFAULT_NORMALIZATION if normalization is None
                               else Normalization(**normalization))
        self.loss_weights = dict(loss_weights or {})
        # Held outside the module tree: not saved, not moved, not averaged.
        object.__setattr__(self, "_export_model", None)
        self.val_psnr = PeakSignalNoiseRatio(data_range=2.0)
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=2.0)
        self.val_usage = CodebookUsage(quantizer.codebook_size, quantizer.num_stages)
        self.validation_counts: Tensor | None = None
        """The code counts of the last validation run, summed over ranks (``(K,)``, or
        ``(S * K,)`` per (stage, code) slot): what
        :class:`~vqtok.training.callbacks.CodebookHistory` records."""

    @property
    def quantizer(self) -> Quantizer:
        return self.model.quantizer

    @property
    def normalization(self) -> Normalization:
        """The pixel normalisation of the training data (class doc)."""
        return self._normalization

    def setup(self, stage: str) -> None:
        """Record the DataModule's pixel normalisation unless one was given; check that the
        discriminator can read the DataModule's images."""
        found = getattr(self.trainer.datamodule, "normalization", None)
        if self.hparams.normalization is None and isinstance(found, Normalization):
            self.hparams["normalization"] = found.as_dict()
            self._normalization = found
        if stage == "fit":
            # A missing weights file stops the run before step 0.
            self.reconstruction.perceptual_network()
            if self.adversarial is not None:
                self._prepare_adversarial_ddp()
        # Fail now rather than at the adversarial start, possibly hours in.
        size = getattr(self.trainer.datamodule, "image_size", None)
        discriminator = None if self.adversarial is None else self.adversarial.discriminator
        smallest = getattr(discriminator, "min_size", None)
        if isinstance(size, int) and isinstance(smallest, int) and size < smallest:
            raise ValueError(f"training images of {size} pixels are too small for the "
                             f"discriminator (at least {smallest} pixels a side); lower its "
                             f"n_layers")

    def _prepare_adversarial_ddp(self) -> None:
        """Make the adversarial step train under DDP (docs/training.md#several-processes).

        Each batch runs two backward passes, and neither uses every parameter: the
        autoencoder's pass leaves the discriminator without gradients (toggled off), the
        discriminator's pass reads detached reconstructions, and before the objective's ``start``
        the discriminator takes no part at all. DDP must therefore look for the parameters each
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
        """What export writes: the model handed to :meth:`use_for_export` (a weight
        average), else the trained autoencoder."""
        return self.model if self._export_model is None else self._export_model

    def use_for_export(self, model: VQAutoencoder | None) -> None:
        """Export ``model`` (an average of :attr:`model`'s weights, of the same
        architecture) instead of :attr:`model`; ``None``: the trained weights again."""
        object.__setattr__(self, "_export_model", model)

    def export(self, out_dir: str | Path) -> Path:
        """Write the autoencoder as a tokenizer directory (nothing else of the module: no
        discriminator, no optimizer state)."""
        return save_tokenizer_dir(self.export_model, out_dir, normalization=self.normalization)

    def forward(self, x: Tensor) -> AutoencoderOutput:
        return self.model(x)

    # ---- losses ------------------------------------------------------------------------
    def compute_losses(self, x: Tensor, out: AutoencoderOutput) -> dict[str, Tensor]:
        """Named terms, their sum under ``"loss"``, and the sum of the reconstruction terms
        alone under ``"reconstruction"`` (for the adaptive weight; not a term of its own)."""
        rec_terms = self.reconstruction(x, out.x_hat.float(), self.normalization)
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

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """One batch; returns ``{"loss", "indices"}``: the autoencoder's loss and the
        batch's code ids, which callbacks receive as ``outputs``
        (:class:`~vqtok.training.callbacks.CodebookHistory`)."""
        x = self.images_of(batch)
        out = self.model(x)
        terms = self.compute_losses(x, out)
        rec = terms.pop("reconstruction")
        loss = terms.pop("loss")
        if self.adversarial is not None:
            loss = self._adversarial_step(x, out.x_hat.float(), loss, rec, terms)
        self.log_dict({f"train/{k}": v for k, v in terms.items()})
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "indices": out.quant.indices.detach()}

    def _adversarial_step(self, x: Tensor, x_hat: Tensor, loss: Tensor, rec: Tensor,
                          logs: dict[str, Tensor]) -> Tensor:
        """One step of each optimizer (docs/training.md#adversarial-training): the
        autoencoder on ``loss`` plus the weighted GAN term, then the discriminator on the
        same (detached) reconstructions. Before the objective's ``start`` only the first
        step runs. Adds its terms to ``logs``; returns the autoencoder's total loss."""
        adversarial = self.adversarial
        opt_ae, opt_d = self.optimizers()
        active = adversarial.active(self.global_step)
        if active:
            self.toggle_optimizer(opt_ae)  # no gradients into the discriminator here
            gen = adversarial.generator_terms(x_hat, rec, self.model.decoder.last_layer)
            loss = loss + gen.pop("gan")
            logs.update(g_loss=gen["g_loss"].detach(), adaptive_weight=gen["adaptive_weight"])
        opt_ae.zero_grad()
        self.manual_backward(loss)
        opt_ae.step()
        if active:
            self.untoggle_optimizer(opt_ae)
        self.lr_schedulers().step()
        if not active:
            return loss.detach()

        disc = adversarial.discriminator_terms(x, x_hat)
        d_loss = disc.pop("loss")
        logs.update(disc)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        # Through the strategy (precision plugin included) rather than opt_d.step(): in
        # manual optimisation Lightning counts every LightningOptimizer step as a global
        # step, and a batch must count once for max_steps, the adversarial start and
        # checkpoints.
        self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=_no_closure)
        self._average_over_ranks(adversarial)
        return loss.detach()

    @torch.no_grad()
    def _average_over_ranks(self, module: nn.Module) -> None:
        """Average the floating-point buffers of ``module`` over the ranks (in place).

        Each rank's discriminator updates its batch-norm running statistics, and LeCam its
        anchors, from its own share of the batch. Both are exponential moving averages, so
        their mean over ranks is the average taken over the whole batch (exactly for means;
        a running variance becomes the mean of the ranks' variances, without the spread
        between the ranks' means); every rank then holds the same values. (Torch's
        ``SyncBatchNorm``, which normalises with whole-batch statistics, runs on GPUs only.)
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        buffers = [b for b in module.buffers() if torch.is_floating_point(b)]
        if not buffers:
            return
        flat = torch.cat([b.reshape(-1).float() for b in buffers])  # one all-reduce for all
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for b, mean in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
            b.copy_(mean.view_as(b))

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
            self.validation_counts = self.val_usage.counts.detach().clone()
            if self.quantizer.num_stages is not None:  # each stage's own usage too
                for s, stage_stats in enumerate(self.val_usage.stage_stats()):
                    log(f"{stage}/usage/stage{s}", stage_stats["usage"])
                    log(f"{stage}/perplexity/stage{s}", stage_stats["perplexity"])
        for metric in (self.val_psnr, self.val_ssim, self.val_usage):
            metric.reset()

    # ---- optimisation ------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        opt = AdamWConfig.build(self.hparams.optimizer)
        total = 1  # the schedule's length only matters when it decays
        if opt.min_lr_ratio < 1:
            estimated = self.trainer.estimated_stepping_batches
            total = int(estimated) if math.isfinite(estimated) else 1
        autoencoder = adamw_warmup_cosine(
            self.model.named_parameters(), **opt.as_dict(), total_steps=total,
            no_decay=lambda name, p: name.startswith("quantizer."))
        if self.adversarial is None:
            return autoencoder
        disc = self.adversarial.optimizer(default_lr=opt.lr)
        return [autoencoder["optimizer"], disc], [autoencoder["lr_scheduler"]]


def _tokenizer_start(path: str) -> tuple[VQAutoencoder, dict[str, float]]:
    """The model and normalisation of the tokenizer directory (or Hub repo id) ``path``."""
    model, config = load_tokenizer_dir(path)
    if "video" in config:
        raise ValueError(f"init_from {path}: a video tokenizer; TokenizerModule starts from "
                         f"image tokenizers")
    return model.train(), dict(config["normalization"])


def _load_start(model: VQAutoencoder, start: VQAutoencoder, path: str) -> None:
    """Copy the weights of ``start`` into ``model`` (whose modules the config may have
    given anew, with other training options), every tensor by name and shape."""
    if model.encoder is start.encoder and model.decoder is start.decoder and (
            model.quantizer is start.quantizer):
        return
    try:
        model.load_state_dict(start.state_dict(), strict=True)
    except RuntimeError as err:
        raise ValueError(f"init_from {path}: its weights do not fit the modules the config "
                         f"gives: {' '.join(str(err).split())[:300]}") from err


def _no_closure() -> None:
    """The closure of an optimizer step whose gradients are already computed."""
