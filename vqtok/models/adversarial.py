"""The losses of adversarial tokenizer training, as plain functions of logits and tensors
(docs/training.md#adversarial-training). Training code (``vqtok.training``) composes them.

- GAN losses, discriminator and generator sides: ``"hinge"`` (Lim & Ye 2017; Miyato et al.
  2018, eq. 16-17) and ``"non_saturating"`` (Goodfellow et al. 2014, section 3: the
  generator maximises ``log D(G(z))``), written with softplus on logits. The
  discriminator's loss is the mean of its real and fake halves, as VQGAN's trainer does.
- :func:`adaptive_weight`: the generator term's weight of VQGAN (Esser et al. 2021, eq. 7).
- :class:`LeCam`: LeCam regularisation (Tseng et al. 2021, eq. 3) with its moving anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GAN_LOSSES = ("hinge", "non_saturating")


def check_gan_loss(name: str) -> str:
    if name not in GAN_LOSSES:
        raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {name!r}")
    return name


def _wide(x: Tensor) -> Tensor:
    """At least float32 (logits may come from a bf16 forward pass); float64 stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def discriminator_loss(kind: str, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """The discriminator's loss on its logits for real and reconstructed images:

    - hinge: ``(mean(relu(1 - real)) + mean(relu(1 + fake))) / 2``
    - non_saturating: ``(mean(softplus(-real)) + mean(softplus(fake))) / 2``, i.e. the
      binary cross-entropy of ``sigmoid(logit)`` against 1 for real and 0 for fake.
    """
    check_gan_loss(kind)
    real, fake = _wide(logits_real), _wide(logits_fake)
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def generator_loss(kind: str, logits_fake: Tensor) -> Tensor:
    """The generator's (here the autoencoder's) loss on the discriminator's logits for its
    reconstructions: ``-mean(fake)`` for hinge, ``mean(softplus(-fake))`` (``-log
    sigmoid``) for non_saturating."""
    check_gan_loss(kind)
    fake = _wide(logits_fake)
    if kind == "hinge":
        return -fake.mean()
    return F.softplus(-fake).mean()


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor,
                    max_weight: float = 1e4, eps: float = 1e-4) -> Tensor:
    """VQGAN's adaptive weight (Esser et al. 2021, eq. 7):
    ``||grad_L rec_loss|| / (||grad_L gan_loss|| + eps)`` with ``L`` the decoder's last
    layer's weight, clamped to ``[0, max_weight]`` and detached. It scales the generator's
    GAN term so that its gradient at the output layer is as large as the reconstruction's.

    Both losses must still hold their graphs (they are kept for the backward pass).
    """
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    gan_grad, = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    weight = _wide(rec_grad).norm() / (_wide(gan_grad).norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


class LeCam(nn.Module):
    """LeCam regularisation of the discriminator (Tseng et al. 2021, eq. 3):

        ``R = mean((D(x) - a_fake)^2) + mean((D(G(z)) - a_real)^2)``

    with ``a_real`` and ``a_fake`` exponential moving averages (decay ``decay``) of the
    discriminator's mean logit on real and on fake images. The anchors are buffers, so they
    travel with the module's state (checkpoints, exact resume); the first update sets them
    to the first means.
    """

    def __init__(self, decay: float = 0.99) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"lecam_decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.register_buffer("anchor_real", torch.zeros(()))
        self.register_buffer("anchor_fake", torch.zeros(()))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def update(self, logits_real: Tensor, logits_fake: Tensor) -> None:
        """Move the anchors towards this batch's mean logits."""
        real, fake = _wide(logits_real).mean(), _wide(logits_fake).mean()
        if not bool(self.initialized):
            self.anchor_real.copy_(real)
            self.anchor_fake.copy_(fake)
            self.initialized.fill_(True)
            return
        self.anchor_real.lerp_(real, 1.0 - self.decay)
        self.anchor_fake.lerp_(fake, 1.0 - self.decay)

    def forward(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        """The penalty against the current anchors (call :meth:`update` first to include
        this batch in them)."""
        return ((logits_real.float() - self.anchor_fake).pow(2).mean()
                + (logits_fake.float() - self.anchor_real).pow(2).mean())
