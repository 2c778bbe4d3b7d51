"""The training objectives called directly on tensors, without a Trainer
(docs/training.md#objectives): the reconstruction terms, the GAN losses on known logits,
LeCam's anchors and penalty, VQGAN's adaptive weight and its clamp, the start-step gating,
the discriminator's optimizer, and the specs checkpoints store."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vqtok.models import PatchDiscriminator
from vqtok.tokenizers.pixels import Normalization
from vqtok.training.objectives import Adversarial, Reconstruction, build_spec, spec_of

NORM = Normalization(0.5, 0.5)


def test_reconstruction_is_the_pixel_loss_in_float64() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    x_hat = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    diff = (x_hat - x).flatten().tolist()
    assert Reconstruction()(x, x_hat, NORM).keys() == {"recon"}
    assert float(Reconstruction("l1")(x, x_hat, NORM)["recon"]) == pytest.approx(
        sum(abs(d) for d in diff) / len(diff), rel=1e-12)
    assert float(Reconstruction("mse")(x, x_hat, NORM)["recon"]) == pytest.approx(
        sum(d * d for d in diff) / len(diff), rel=1e-12)


def test_colour_term_by_hand_and_what_it_leaves_alone() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64) * 2 - 1
    x_hat = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64) * 2 - 1
    # By hand, pixel by pixel: the chroma of the error is the error less its channel mean
    errors = (x_hat - x).permute(0, 2, 3, 1).reshape(-1, 3).tolist()
    chroma = [[e - sum(pixel) / 3 for e in pixel] for pixel in errors]
    l1 = sum(abs(c) for pixel in chroma for c in pixel) / (3 * len(chroma))
    sq = sum(c * c for pixel in chroma for c in pixel) / (3 * len(chroma))
    terms = Reconstruction("l1", colour_weight=2.0)(x, x_hat, NORM)
    assert terms.keys() == {"recon", "colour"}
    assert float(terms["colour"]) == pytest.approx(2.0 * l1, rel=1e-12)
    assert float(Reconstruction("mse", colour_weight=0.5)(x, x_hat, NORM)["colour"]
                 ) == pytest.approx(0.5 * sq, rel=1e-12)
    # Squared errors split into the grey level's and the chroma's (orthogonal parts): the
    # grey part is 3 * (mean error)^2 per pixel, the rest is the chroma's
    grey = sum(3 * (sum(pixel) / 3) ** 2 for pixel in errors) / (3 * len(errors))
    mse = Reconstruction("mse")(x, x_hat, NORM)["recon"]
    assert float(mse) == pytest.approx(grey + sq, rel=1e-12)
    # An error of grey level only (the same on every channel) costs no colour; neither
    # does a grey image against a grey reconstruction (rounding aside); clips (B, C, T, H, W)
    # work alike
    shift = torch.rand(2, 1, 4, 5, generator=g, dtype=torch.float64)
    assert float(Reconstruction(colour_weight=3.0)(x, x + shift, NORM)["colour"]) < 1e-15
    assert float(Reconstruction(colour_weight=3.0)(x[:, :1], x_hat[:, :1], NORM)["colour"]
                 ) == 0.0
    clip = Reconstruction(colour_weight=2.0)(x[:, :, None], x_hat[:, :, None], NORM)
    assert float(clip["colour"]) == pytest.approx(2.0 * l1, rel=1e-12)
    assert Reconstruction(colour_weight=0.0)(x, x_hat, NORM).keys() == {"recon"}
    with pytest.raises(ValueError, match="colour_weight must be >= 0"):
        Reconstruction(colour_weight=-1.0)


class Logits(nn.Module):
    """A "discriminator" whose logits are its input, so the losses can be checked on
    chosen logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


REAL = torch.tensor([0.5, 2.0], dtype=torch.float64)
FAKE = torch.tensor([-2.0, 0.3], dtype=torch.float64)


def softplus(v: float) -> float:
    return float(torch.nn.functional.softplus(torch.tensor(v, dtype=torch.float64)))


def test_discriminator_terms_hinge_and_lecam_by_hand() -> None:
    adv = Adversarial(Logits(), gan_loss="hinge", lecam_weight=0.1, lecam_decay=0.5)
    real, fake = REAL.float(), FAKE.float()  # LeCam's anchors are float32 buffers
    terms = adv.discriminator_terms(real, fake)
    # hinge: (mean(relu(1 - real)) + mean(relu(1 + fake))) / 2
    d_loss = 0.5 * (0.25 + 0.65)
    # LeCam's first update sets the anchors to the batch means: a_real 1.25, a_fake -0.85
    lecam = (((0.5 + 0.85) ** 2 + (2.0 + 0.85) ** 2) / 2
             + ((-2.0 - 1.25) ** 2 + (0.3 - 1.25) ** 2) / 2)
    assert float(terms["d_loss"]) == pytest.approx(d_loss, rel=1e-6)
    assert float(terms["lecam"]) == pytest.approx(lecam, rel=1e-6)
    assert float(terms["loss"]) == pytest.approx(d_loss + 0.1 * lecam, rel=1e-6)
    assert float(terms["logits_real"]) == pytest.approx(1.25)
    assert float(terms["logits_fake"]) == pytest.approx(-0.85)
    # the second batch moves the anchors half-way (decay 0.5) towards its means
    real2, fake2 = real + 1.0, fake - 1.0
    terms = adv.discriminator_terms(real2, fake2)
    a_real, a_fake = 0.5 * 1.25 + 0.5 * 2.25, 0.5 * -0.85 + 0.5 * -1.85
    assert float(adv.lecam.anchor_real) == pytest.approx(a_real)
    assert float(adv.lecam.anchor_fake) == pytest.approx(a_fake)
    expected = (sum((r - a_fake) ** 2 for r in real2.tolist()) / 2
                + sum((f - a_real) ** 2 for f in fake2.tolist()) / 2)
    assert float(terms["lecam"]) == pytest.approx(expected, rel=1e-6)


def test_discriminator_terms_non_saturating_and_no_lecam_by_default() -> None:
    adv = Adversarial(Logits(), gan_loss="non_saturating")
    terms = adv.discriminator_terms(REAL, FAKE)
    expected = 0.5 * ((softplus(-0.5) + softplus(-2.0)) / 2 + (softplus(-2.0) + softplus(0.3)) / 2)
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-12)
    assert "lecam" not in terms and adv.lecam is None


@pytest.mark.parametrize(("gan_loss", "max_weight"), [("hinge", 1e4), ("non_saturating", 1e4),
                                                      ("hinge", 0.05)])
def test_generator_terms_are_the_adaptive_weight_formula(gan_loss: str,
                                                         max_weight: float) -> None:
    """gan = weight * clamp(||d rec / dL|| / (||d g / dL|| + 1e-4), 0, max) * g, with
    both gradients taken by hand on a linear last layer L (float64)."""
    torch.manual_seed(0)
    last = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    h = torch.randn(5, 4, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    x_hat = h @ last.T  # (5, 3): the "decoder" output
    rec = (x_hat - x).abs().mean()
    adv = Adversarial(Logits(), gan_loss=gan_loss, weight=0.8, adaptive_weight_max=max_weight)
    terms = adv.generator_terms(x_hat, rec, last)
    # by hand: d rec / dL = sign(x_hat - x)^T h / N; g = -mean(x_hat) (hinge) or
    # mean(softplus(-x_hat)); d g / dL = (d g / d x_hat)^T h
    n, x_hat = x_hat.numel(), x_hat.detach()
    rec_grad = (torch.sign(x_hat - x) / n).T @ h
    if gan_loss == "hinge":
        g = -x_hat.mean()
        dg = torch.full_like(x_hat, -1.0 / n)
    else:
        g = torch.nn.functional.softplus(-x_hat).mean()
        dg = -torch.sigmoid(-x_hat) / n
    gan_grad = dg.T @ h
    a = min(max(float(rec_grad.norm() / (gan_grad.norm() + 1e-4)), 0.0), max_weight)
    assert float(terms["g_loss"].detach()) == pytest.approx(float(g), rel=1e-12)
    assert float(terms["adaptive_weight"]) == pytest.approx(0.8 * a, rel=1e-9)
    assert float(terms["gan"].detach()) == pytest.approx(0.8 * a * float(g), rel=1e-9)
    assert not terms["adaptive_weight"].requires_grad  # a weight, not a path for gradients
    terms["gan"].backward()  # the term itself trains the last layer
    assert last.grad is not None and last.grad.abs().sum() > 0


def test_start_gates_the_adversarial_terms() -> None:
    adv = Adversarial(Logits(), start=3)
    assert [adv.active(step) for step in range(5)] == [False, False, False, True, True]
    assert Adversarial(Logits()).active(0)


def test_discriminator_optimizer_reads_lr_and_betas() -> None:
    disc = PatchDiscriminator(in_channels=1, channels=4, n_layers=1)
    opt = Adversarial(disc, lr=2e-4, betas=(0.4, 0.8)).optimizer(default_lr=1e-3)
    assert opt.param_groups[0]["lr"] == 2e-4 and opt.param_groups[0]["betas"] == (0.4, 0.8)
    assert Adversarial(disc).optimizer(default_lr=1e-3).param_groups[0]["lr"] == 1e-3
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in disc.parameters()}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"gan_loss": "wgan"}, "gan_loss must be one of"),
    ({"weight": -1.0}, "weight must be >= 0"),
    ({"start": -1}, "start must be >= 0"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"lecam_weight": -0.1}, "lecam_weight must be >= 0"),
    ({"lecam_weight": 0.1, "lecam_decay": 1.0}, "lecam_decay must be in"),
])
def test_bad_adversarial_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Adversarial(Logits(), **kwargs)


def test_specs_are_plain_data_and_rebuild() -> None:
    torch.manual_seed(0)
    adv = Adversarial(PatchDiscriminator(in_channels=1, channels=4, n_layers=2), start=7,
                      lecam_weight=0.1)
    spec = spec_of(adv)
    assert spec["init_args"]["discriminator"]["class_path"].endswith("PatchDiscriminator")
    json.dumps(spec)  # what a weights_only checkpoint can hold
    rebuilt = build_spec(spec)
    assert isinstance(rebuilt, Adversarial) and rebuilt.start == 7
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in adv.state_dict().items()}
    rec = build_spec(spec_of(Reconstruction("mse", perceptual_weight=0.5, colour_weight=2.0)))
    assert (rec.pixel_loss, rec.perceptual_weight, rec.lpips_weights, rec.colour_weight) == (
        "mse", 0.5, None, 2.0)
