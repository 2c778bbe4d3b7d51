"""Adversarial losses, VQGAN's adaptive weight, LeCam and the patch discriminator, against
hand computations (docs/training.md#adversarial-training)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vqtok import registry
from vqtok.models import PatchDiscriminator
from vqtok.models.adversarial import (
    LeCam,
    adaptive_weight,
    discriminator_loss,
    generator_loss,
)

REAL = [2.0, 0.5, -1.0, 0.0]
FAKE = [-2.0, 0.5, 1.0, -0.25]


def logits(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).reshape(1, 1, 2, 2)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_hinge_losses_equal_their_formulas() -> None:
    # by hand: relu(1 - real) = 0, .5, 2, 1 (mean .875); relu(1 + fake) = 0, 1.5, 2, .75
    # (mean 1.0625); the discriminator's loss is their mean: .96875
    assert discriminator_loss("hinge", logits(REAL), logits(FAKE)).item() == 0.96875
    # generator: -mean(fake) = -(-2 + .5 + 1 - .25) / 4 = .1875
    assert generator_loss("hinge", logits(FAKE)).item() == 0.1875


def test_non_saturating_losses_equal_their_formulas() -> None:
    d_real = sum(softplus(-v) for v in REAL) / 4  # -log sigmoid(real)
    d_fake = sum(softplus(v) for v in FAKE) / 4  # -log (1 - sigmoid(fake))
    got = discriminator_loss("non_saturating", logits(REAL), logits(FAKE)).item()
    assert got == pytest.approx(0.5 * (d_real + d_fake), rel=1e-6)
    g = generator_loss("non_saturating", logits(FAKE)).item()
    assert g == pytest.approx(sum(softplus(-v) for v in FAKE) / 4, rel=1e-6)
    # the same as binary cross-entropy: real labelled 1, fake 0; the generator wants 1
    bce = F.binary_cross_entropy_with_logits
    assert got == pytest.approx(0.5 * (bce(logits(REAL), torch.ones(1, 1, 2, 2)).item()
                                       + bce(logits(FAKE), torch.zeros(1, 1, 2, 2)).item()),
                                rel=1e-6)


def test_unknown_gan_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="gan_loss must be one of"):
        generator_loss("wasserstein", logits(FAKE))


def test_adaptive_weight_equals_a_hand_computation() -> None:
    """A one-layer 'decoder' ``y = W h`` whose gradients have closed forms: with
    rec = mean((y - t)^2) over n outputs, dRec/dW = 2/n (y - t) h^T; with the linear critic
    D(y) = v . y and the hinge generator loss -D(y), dG/dW = -v h^T."""
    torch.manual_seed(0)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    h, t, v = (torch.randn(4, dtype=torch.float64), torch.randn(3, dtype=torch.float64),
               torch.randn(3, dtype=torch.float64))
    y = w @ h
    rec = ((y - t) ** 2).mean()
    gan = generator_loss("hinge", (v * y).sum().reshape(1)).double()
    with torch.no_grad():
        grad_rec = 2.0 / 3.0 * torch.outer(y - t, h)
        grad_gan = -torch.outer(v, h)
        expected = torch.linalg.norm(grad_rec) / (torch.linalg.norm(grad_gan) + 1e-4)
    got = adaptive_weight(rec, gan, w)
    assert not got.requires_grad
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=0.0)
    # clamped at the maximum; the graphs stay usable for the backward pass
    assert adaptive_weight(rec, gan, w, max_weight=0.5 * float(expected)).item() == \
        pytest.approx(0.5 * float(expected))
    (rec + got * gan).backward()
    torch.testing.assert_close(w.grad, grad_rec + expected * grad_gan)


def test_lecam_equals_its_formula() -> None:
    lecam = LeCam(decay=0.9)
    r1, f1 = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    r2, f2 = torch.tensor([0.0, 2.0]), torch.tensor([-3.0, -1.0])
    lecam.update(r1, f1)  # the first update sets the anchors to the means: 2 and -1
    assert (lecam.anchor_real.item(), lecam.anchor_fake.item()) == (2.0, -1.0)
    lecam.update(r2, f2)  # 0.9 * 2 + 0.1 * 1 = 1.9; 0.9 * -1 + 0.1 * -2 = -1.1
    assert lecam.anchor_real.item() == pytest.approx(1.9)
    assert lecam.anchor_fake.item() == pytest.approx(-1.1)
    # mean((real - a_fake)^2) + mean((fake - a_real)^2)
    expected = ((0 + 1.1) ** 2 + (2 + 1.1) ** 2) / 2 + ((-3 - 1.9) ** 2 + (-1 - 1.9) ** 2) / 2
    assert lecam(r2, f2).item() == pytest.approx(expected, rel=1e-6)
    assert set(lecam.state_dict()) == {"anchor_real", "anchor_fake", "initialized"}


@pytest.mark.parametrize(("size", "n_layers", "out"), [(256, 3, 30), (64, 3, 6), (32, 2, 6),
                                                       (24, 3, 1)])
def test_discriminator_output_shape(size: int, n_layers: int, out: int) -> None:
    # 256 -> 30 x 30 logits is pix2pix's 70 x 70 PatchGAN on its 256 x 256 images
    disc = PatchDiscriminator(in_channels=3, channels=8, n_layers=n_layers)
    assert disc(torch.randn(2, 3, size, size)).shape == (2, 1, out, out)


def test_discriminator_logit_sees_a_70_pixel_patch() -> None:
    """Each logit of the 3-layer design depends on a 70 x 70 window of the input."""
    disc = PatchDiscriminator(in_channels=1, channels=4, n_layers=3, norm="none").double()
    x = torch.randn(1, 1, 128, 128, dtype=torch.float64, requires_grad=True)
    logit = disc(x)[0, 0, 6, 6]
    grad, = torch.autograd.grad(logit, x)
    rows = torch.nonzero(grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(grad[0, 0].abs().sum(0)).flatten()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_discriminator_checks_and_registry() -> None:
    disc = PatchDiscriminator(in_channels=1, channels=8, n_layers=2)
    with pytest.raises(ValueError, match="too small for a 2-layer discriminator"):
        disc(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, H, W\)"):
        disc(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="norm must be one of"):
        PatchDiscriminator(norm="instance")
    spec = registry.spec_of(disc)
    assert spec == {"class_path": "vqtok.models.discriminator.PatchDiscriminator",
                    "init_args": {"in_channels": 1, "channels": 8, "n_layers": 2,
                                  "norm": "batch"}}
    rebuilt = registry.build({"class_path": "vqtok.models.PatchDiscriminator",
                              "init_args": spec["init_args"]})
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in disc.parameters()]


def test_decoder_last_layer_is_its_output_convolution() -> None:
    from vqtok.models import Decoder

    decoder = Decoder(out_channels=3, channels=8, channel_mult=(1, 2), dim=4, num_groups=4)
    z = torch.randn(1, 4, 5, 5)
    # the output is a linear function of the last layer's weight: doubling that weight
    # (bias zeroed) doubles the output
    with torch.no_grad():
        decoder.layers[-1].bias.zero_()
        once = decoder(z)
        decoder.last_layer.mul_(2.0)
        torch.testing.assert_close(decoder(z), 2.0 * once)
    assert decoder.last_layer.shape[0] == 3
