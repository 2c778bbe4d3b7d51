"""The objectives a :class:`~vqtok.training.module.TokenizerModule` trains on, each a small
component that a config names by ``class_path`` / ``init_args`` (docs/training.md#objectives)
and that works on plain tensors, without a Trainer:

- :class:`Reconstruction`: the terms comparing the reconstruction with the input, a pixel
  loss and optionally LPIPS (docs/training.md#lpips).
- :class:`Adversarial`: a discriminator, its GAN loss, VQGAN's adaptive weight of the
  generator's term, LeCam regularisation and the step from which all of it is on
  (docs/training.md#adversarial-training). The losses themselves are the functions of
  :mod:`vqtok.models.adversarial`.

Both are registered (:mod:`vqtok.registry`), so checkpoints store them as specs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtok import registry
from vqtok.models.adversarial import (
    LeCam,
    adaptive_weight,
    check_gan_loss,
    discriminator_loss,
    generator_loss,
)
from vqtok.models.lpips import LPIPS
from vqtok.tokenizers.pixels import Normalization

PIXEL_LOSSES = ("l1", "mse")


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")


@registry.register
class Reconstruction:
    """The reconstruction terms: ``{"recon": pixel loss}``, plus ``{"colour":
    colour_weight * the same loss of the chroma}`` when ``colour_weight > 0`` and
    ``{"perceptual": perceptual_weight * mean LPIPS}`` when ``lpips_weights`` is given. The
    adaptive GAN weight balances the GAN term against their sum (Esser et al. 2021, eq. 7).

    Args:
        pixel_loss: ``"l1"`` or ``"mse"`` between the reconstruction and the input.
        lpips_weights: the LPIPS weights file (``vqtok lpips convert``,
            docs/training.md#lpips) for the perceptual term; ``None`` (default): no
            perceptual term. Read on first use (:meth:`perceptual_network`; the module reads
            it when training starts, so a missing or foreign file stops the run with a
            one-line error); the network is frozen and never part of a checkpoint or export.
        perceptual_weight: the perceptual term's weight (VQGAN uses 1.0).
        colour_weight: weight of the pixel loss between the chroma of the reconstruction
            and of the input, a pixel's values less their mean over its channels
            (docs/training.md#colour); 0 (default): no such term. The pixel loss already
            holds the chroma error once; this term counts it ``1 + colour_weight`` times and
            leaves the error of the grey level as it was.
    """

    def __init__(self, pixel_loss: str = "l1", lpips_weights: str | None = None,
                 perceptual_weight: float = 1.0, colour_weight: float = 0.0) -> None:
        if pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"pixel_loss must be one of {PIXEL_LOSSES}, got {pixel_loss!r}")
        _check_non_negative(perceptual_weight=perceptual_weight, colour_weight=colour_weight)
        self.pixel_loss = pixel_loss
        self.lpips_weights = lpips_weights
        self.perceptual_weight = perceptual_weight
        self.colour_weight = colour_weight
        self._lpips: LPIPS | None = None

    def perceptual_network(self) -> LPIPS | None:
        """The frozen LPIPS network of ``lpips_weights`` (read on first use), or None."""
        if self.lpips_weights is not None and self._lpips is None:
            self._lpips = LPIPS.from_file(self.lpips_weights)
        return self._lpips

    def __call__(self, x: Tensor, x_hat: Tensor,
                 normalization: Normalization) -> dict[str, Tensor]:
        """The named terms for input ``x`` and reconstruction ``x_hat`` (model space, of
        pixel normalisation ``normalization``; images or clips)."""
        loss = F.l1_loss if self.pixel_loss == "l1" else F.mse_loss
        terms = {"recon": loss(x_hat, x)}
        if self.colour_weight > 0:
            # The normalisation is one affine map for all channels, so the chroma in model
            # space is the chroma of the pixels over std.
            terms["colour"] = self.colour_weight * loss(_chroma(x_hat), _chroma(x))
        net = self.perceptual_network()
        if net is not None:
            net = net.to(x.device)
            distance = net(_lpips_input(x_hat, normalization),
                           _lpips_input(x, normalization))  # (B,)
            terms["perceptual"] = self.perceptual_weight * distance.mean()
        return terms


def _chroma(x: Tensor) -> Tensor:
    """Each pixel less the mean of its channels (dimension 1; images or clips)."""
    return x - x.mean(dim=1, keepdim=True)


def _lpips_input(x: Tensor, norm: Normalization) -> Tensor:
    """Model-space images (any normalisation; grey, RGB; clips ``(B, C, T, H, W)`` frame by
    frame) -> the ``(N, 3, H, W)`` [-1, 1] RGB batch LPIPS reads."""
    if x.ndim == 5:
        x = x.transpose(1, 2).flatten(0, 1)  # (B * T, C, H, W)
    x = (x * norm.std + norm.mean) * 2.0 - 1.0
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@registry.register
class Adversarial(nn.Module):
    """Adversarial training against a discriminator (docs/training.md#adversarial-training).

    The autoencoder's GAN term is ``weight * a * g_loss`` with ``a`` VQGAN's adaptive
    weight (:func:`~vqtok.models.adversarial.adaptive_weight`); the discriminator trains on
    ``d_loss + lecam_weight * LeCam``. Both are on from step ``start``
    (:meth:`active`). The discriminator and LeCam's anchors are submodules, so they travel
    with the training module's state (checkpoints, exact resume) but never reach an export.

    Args:
        discriminator: e.g. :class:`~vqtok.models.PatchDiscriminator` (or its registry spec).
        gan_loss: ``"hinge"`` or ``"non_saturating"`` (:mod:`vqtok.models.adversarial`).
        weight: factor on the adaptive weight of the generator's GAN term.
        start: the step from which the GAN term is on and the discriminator trains.
        lr: the discriminator's Adam learning rate (``None``: the autoencoder's), constant.
        betas: the discriminator's Adam betas.
        adaptive_weight_max: the adaptive weight is clamped to ``[0, adaptive_weight_max]``.
        lecam_weight: weight of LeCam regularisation on the discriminator (0: off).
        lecam_decay: decay of the moving averages LeCam anchors to.
    """

    def __init__(self, discriminator: nn.Module, gan_loss: str = "hinge", weight: float = 0.8,
                 start: int = 0, lr: float | None = None,
                 betas: tuple[float, float] = (0.5, 0.9), adaptive_weight_max: float = 1e4,
                 lecam_weight: float = 0.0, lecam_decay: float = 0.99) -> None:
        super().__init__()
        check_gan_loss(gan_loss)
        _check_non_negative(weight=weight, start=start, adaptive_weight_max=adaptive_weight_max,
                            lecam_weight=lecam_weight)
        if lr is not None and not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        self.discriminator = build_spec(discriminator)
        self.lecam = LeCam(lecam_decay) if lecam_weight > 0 else None
        self.gan_loss, self.weight, self.start = gan_loss, weight, start
        self.lr, self.betas = lr, tuple(betas)
        self.adaptive_weight_max, self.lecam_weight = adaptive_weight_max, lecam_weight

    def check(self, in_channels: int, last_layer: Any, decoder_name: str) -> None:
        """Refuse an autoencoder this objective cannot train: the adaptive weight needs the
        decoder's output weight (``last_layer``), and the discriminator must read the
        encoder's ``in_channels``."""
        if not isinstance(last_layer, nn.Parameter):
            raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
                f"adversarial training needs the decoder's output weight for the adaptive "
                f"weight; {decoder_name} has no last_layer parameter")
        channels = getattr(self.discriminator, "in_channels", in_channels)
        if channels != in_channels:
            raise ValueError(f"the discriminator reads {channels}-channel images but the "
                             f"encoder {in_channels}-channel ones")

    def active(self, step: int) -> bool:
        """Whether the GAN term is on and the discriminator trains at optimizer step ``step``."""
        return step >= self.start

    def generator_terms(self, x_hat: Tensor, reconstruction: Tensor,
                        last_layer: Tensor) -> dict[str, Tensor]:
        """The autoencoder's side: ``{"gan": the weighted term to add to its loss, "g_loss",
        "adaptive_weight": weight * a}``. ``reconstruction`` (the sum of the reconstruction
        terms) and ``x_hat`` must still hold their graphs."""
        g_loss = generator_loss(self.gan_loss, self.discriminator(x_hat))
        weight = self.weight * adaptive_weight(reconstruction, g_loss, last_layer,
                                               self.adaptive_weight_max)
        return {"gan": weight * g_loss, "g_loss": g_loss, "adaptive_weight": weight}

    def discriminator_terms(self, x: Tensor, x_hat: Tensor) -> dict[str, Tensor]:
        """The discriminator's side on real ``x`` and reconstructed ``x_hat`` (both
        detached here): ``{"loss": what it minimises, "d_loss", "logits_real",
        "logits_fake"}`` plus ``"lecam"`` (the penalty, after moving LeCam's anchors to this
        batch) when LeCam is on. All but ``"loss"`` are detached, for logging."""
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(x_hat.detach())
        d_loss = discriminator_loss(self.gan_loss, logits_real, logits_fake)
        terms = {"d_loss": d_loss.detach(), "logits_real": logits_real.detach().float().mean(),
                 "logits_fake": logits_fake.detach().float().mean()}
        if self.lecam is not None:
            self.lecam.update(logits_real, logits_fake)
            penalty = self.lecam(logits_real, logits_fake)
            terms["lecam"] = penalty.detach()
            d_loss = d_loss + self.lecam_weight * penalty
        terms["loss"] = d_loss
        return terms

    def optimizer(self, default_lr: float) -> torch.optim.Optimizer:
        """The discriminator's Adam (learning rate ``lr``, else ``default_lr``)."""
        return torch.optim.Adam(self.discriminator.parameters(), lr=self.lr or default_lr,
                                betas=self.betas)


def spec_of(obj: Any) -> dict[str, Any]:
    """The registry spec of a registered instance, with registered instances among its
    init args (an objective's discriminator) written as specs too: plain data for a
    checkpoint read with ``weights_only=True``."""
    spec = registry.spec_of(obj)
    spec["init_args"] = {k: spec_of(v) if hasattr(v, "init_args") else v
                         for k, v in spec["init_args"].items()}
    return spec


def build_spec(value: Any) -> Any:
    """A registry spec (what :func:`spec_of` writes, nested specs included) built from the
    registry alone; anything else is returned as it is."""
    if not (isinstance(value, dict) and "class_path" in value):
        return value
    init_args = value.get("init_args") or {}
    if isinstance(init_args, dict):
        init_args = {k: build_spec(v) for k, v in init_args.items()}
    return registry.build({**value, "init_args": init_args})
