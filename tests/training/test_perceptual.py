"""The LPIPS perceptual term in TokenizerModule (docs/training.md#lpips): its value, the
pixel range LPIPS is given, that the network never reaches a checkpoint, an export or the
optimizer, and the one-line refusal of a run whose weights file is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import needs_fashion_mnist, vqtok_cli
from tests.training.test_adversarial import _fmnist_vqgan_args
from tests.training.test_module import DIM, loader, tiny_module, trainer
from vqtok.formats.lpips_weights import write_lpips_weights
from vqtok.models.lpips import LPIPS
from vqtok.quantizers import FSQ
from vqtok.training.objectives import Reconstruction


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lpips") / "lpips.safetensors"
    write_lpips_weights(path, LPIPS.random(seed=3).weights())
    return path


@pytest.mark.parametrize(("mean", "std"), [(0.5, 0.5), (0.0, 1.0), (0.2860, 0.3530)])
def test_perceptual_term_is_the_weighted_lpips_of_rgb_pixels_in_minus_one_one(
        weights_file: Path, mean: float, std: float) -> None:
    module = tiny_module(FSQ([4, 4, 4], dim=DIM),
                         reconstruction=Reconstruction(lpips_weights=str(weights_file),
                                                       perceptual_weight=0.7),
                         normalization={"mean": mean, "std": std})
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 1, 16, 16, generator=g)  # grey images in [0, 1]
    x = (pixels - mean) / std  # what the model sees
    out = module(x)
    terms = module.compute_losses(x, out)
    # Hand mapping: model space -> [0, 1] -> [-1, 1], grey repeated to RGB.
    recon_pixels = out.x_hat.detach() * std + mean
    net = LPIPS.random(seed=3)
    expected = 0.7 * net((recon_pixels * 2 - 1).repeat(1, 3, 1, 1),
                         (pixels * 2 - 1).repeat(1, 3, 1, 1)).mean()
    torch.testing.assert_close(terms["perceptual"].detach(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(terms["reconstruction"].detach(),
                               (terms["recon"] + terms["perceptual"]).detach())
    # it trains the autoencoder: a gradient reaches the decoder's output layer
    terms["perceptual"].backward()
    assert module.model.decoder.last_layer.grad.abs().sum() > 0


def test_lpips_stays_out_of_state_parameters_and_checkpoints(weights_file: Path,
                                                             tmp_path: Path) -> None:
    module = tiny_module(FSQ([4, 4, 4], dim=DIM),
                         reconstruction=Reconstruction(lpips_weights=str(weights_file)))
    plain = tiny_module(FSQ([4, 4, 4], dim=DIM))
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    t.fit(module, loader(8))
    assert module.reconstruction.perceptual_network() is not None  # it was used
    assert set(module.state_dict()) == set(plain.state_dict())
    assert len(list(module.parameters())) == len(list(plain.parameters()))
    t.save_checkpoint(tmp_path / "run.ckpt")
    ckpt = torch.load(tmp_path / "run.ckpt", map_location="cpu", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if "lpips" in k or "features." in k]
    assert ckpt["hyper_parameters"]["reconstruction"]["init_args"]["lpips_weights"] == str(
        weights_file)


def test_bad_perceptual_weight_is_refused() -> None:
    with pytest.raises(ValueError, match="perceptual_weight must be >= 0"):
        Reconstruction(perceptual_weight=-1.0)


@needs_fashion_mnist
def test_fit_without_the_weights_file_stops_at_start_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.safetensors"
    run = vqtok_cli(["fit", *_fmnist_vqgan_args(tmp_path, 3),
                     f"--trainer.logger.init_args.save_dir={tmp_path}",
                     f"--model.reconstruction.init_args.lpips_weights={missing}"],
                    tmp_path)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert "Traceback" not in run.stderr
    assert any("vqtok lpips convert" in line and str(missing) in line for line in lines), \
        run.stderr[-2000:]
    assert not list(tmp_path.glob("fmnist_vqgan/version_*/checkpoints/*.ckpt"))
