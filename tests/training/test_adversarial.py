"""Adversarial training (docs/training.md#adversarial-training) and the weight average
(docs/training.md#weight-average): two optimizers stepped once per batch, the
discriminator off before the objective's ``start``, the average against a float64
recurrence, checkpoints, exact resume and export from the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.helpers import (
    FASHION_MNIST,
    ROOT,
    assert_same_state,
    needs_fashion_mnist,
    vqtok_cli,
)
from tests.training.test_module import DIM, loader, tiny_module, trainer
from vqtok import registry
from vqtok.models import PatchDiscriminator
from vqtok.quantizers import FSQ, VectorQuantizer
from vqtok.tokenizers import ImageTokenizer
from vqtok.training.callbacks import WeightEMA
from vqtok.training.module import TokenizerModule
from vqtok.training.objectives import Adversarial


def adversarial_module(**kwargs) -> TokenizerModule:
    torch.manual_seed(0)
    disc = PatchDiscriminator(in_channels=1, channels=4, n_layers=2)
    return tiny_module(FSQ([4, 4, 4], dim=DIM), adversarial=Adversarial(disc, **kwargs))


class Record(pl.Callback):
    """Copies, after every training batch, the discriminator's weights and the logged
    metrics."""

    def __init__(self) -> None:
        self.disc: list[dict[str, torch.Tensor]] = []
        self.metrics: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule,
                           *args: object) -> None:
        disc = module.adversarial.discriminator
        self.disc.append({k: v.clone() for k, v in disc.state_dict().items()})
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


@pytest.mark.parametrize("gan_loss", ["hinge", "non_saturating"])
def test_one_step_of_each_optimizer_per_batch_from_disc_start(gan_loss: str,
                                                              tmp_path: Path) -> None:
    module = adversarial_module(gan_loss=gan_loss, start=2, lecam_weight=0.1)
    initial = {k: v.clone() for k, v in module.adversarial.discriminator.state_dict().items()}
    record = Record()
    trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[record]).fit(
        module, loader(16))
    assert module.trainer.global_step == 4  # batches, not optimizer steps
    # steps 0 and 1: the discriminator is neither used for the loss nor trained
    for state in record.disc[:2]:
        assert all(torch.equal(state[k], initial[k]) for k in initial)
    assert "train/d_loss" not in record.metrics[1]
    assert not torch.equal(record.disc[2]["layers.0.weight"], initial["layers.0.weight"])
    assert not torch.equal(record.disc[3]["layers.0.weight"], record.disc[2]["layers.0.weight"])
    for key in ("recon", "loss", "g_loss", "adaptive_weight", "d_loss", "lecam", "logits_real",
                "logits_fake"):
        assert key in {k.removeprefix("train/") for k in record.metrics[3]}, key
    _, opt_d = module.trainer.optimizers
    assert {id(p) for g in opt_d.param_groups for p in g["params"]} == {
        id(p) for p in module.adversarial.discriminator.parameters()}
    assert len(opt_d.state) == len(list(module.adversarial.discriminator.parameters()))
    assert opt_d.param_groups[0]["betas"] == (0.5, 0.9)


def test_bad_adversarial_options_are_refused() -> None:
    with pytest.raises(ValueError, match="gan_loss must be one of"):
        adversarial_module(gan_loss="wgan")
    with pytest.raises(ValueError, match="start must be >= 0"):
        adversarial_module(start=-1)
    with pytest.raises(ValueError, match="discriminator reads 3-channel images but the "
                                         "encoder 1-channel ones"):
        tiny_module(FSQ([4, 4, 4], dim=DIM),
                    adversarial=Adversarial(PatchDiscriminator(in_channels=3)))
    with pytest.raises(ValueError, match="decay must be in"):
        WeightEMA(decay=1.0)


@pytest.mark.parametrize("decay", [0.2, 0.9])
def test_ema_equals_a_float64_recurrence(decay: float, tmp_path: Path) -> None:
    """After each optimizer step: e_1 = w_1, e_k = d_k e_(k-1) + (1 - d_k) w_k with
    d_k = min(decay, k / (9 + k)) (the warm-up), for every float weight and buffer."""
    torch.manual_seed(0)
    module = tiny_module(VectorQuantizer(16, DIM, ema_decay=0.9))
    ema = WeightEMA(decay)
    seen: list[dict[str, torch.Tensor]] = []

    class Weights(pl.Callback):
        def on_train_batch_end(self, trainer, module, *args) -> None:
            seen.append({k: v.double().clone() for k, v in module.model.state_dict().items()
                         if v.is_floating_point()})

    trainer(tmp_path, max_steps=6, limit_val_batches=0, callbacks=[Weights(), ema]).fit(
        module, loader(24))
    assert len(seen) == 6
    expected = dict(seen[0])
    for k, weights in enumerate(seen[1:], start=2):
        d = min(decay, k / (9 + k))
        expected = {n: d * expected[n] + (1 - d) * weights[n] for n in expected}
    averaged = ema.average.module.state_dict()
    assert int(ema.average.n_averaged) == 6
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name].double(), value, rtol=1e-5, atol=1e-6,
                                   msg=name)
    assert not torch.equal(averaged["encoder.layers.0.weight"],
                           module.model.state_dict()["encoder.layers.0.weight"])
    # export writes the average by default, the raw weights without it
    module.export(tmp_path / "ema")
    exported = load_file(tmp_path / "ema" / "model.safetensors")
    assert all(torch.equal(exported[k], averaged[k]) for k in exported)
    module.use_for_export(None)
    module.export(tmp_path / "raw")
    raw = load_file(tmp_path / "raw" / "model.safetensors")
    assert all(torch.equal(raw[k], module.model.state_dict()[k]) for k in raw)


def _fmnist_vqgan_args(tmp_path: Path, steps: int) -> list[str]:
    """experiments/fmnist_vqgan.yaml at test size: 64 images in batches of 8, narrow nets,
    the discriminator from step 3 with LeCam."""
    return [f"--config={ROOT / 'experiments' / 'fmnist_vqgan.yaml'}",
            f"--data.init_args.root={FASHION_MNIST}", "--data.init_args.limit_train=64",
            "--data.init_args.val_size=16", "--data.init_args.batch_size=8",
            *(f"--model.{part}.init_args.{k}={v}" for part in ("encoder", "decoder")
              for k, v in (("channels", 8), ("num_groups", 4))),
            "--model.adversarial.init_args.discriminator.init_args.channels=8",
            "--model.adversarial.init_args.start=3",
            "--model.adversarial.init_args.lecam_weight=0.1", "--ema.init_args.decay=0.9",
            f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}",
            "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]


@pytest.mark.slow  # ~40 s: three CLI runs
@needs_fashion_mnist
def test_vqgan_recipe_resumes_both_optimizers_bit_for_bit(tmp_path: Path) -> None:
    from tests.training.test_resume import _stop_and_resume

    alone, resumed = _stop_and_resume(tmp_path, ["fit"], _fmnist_vqgan_args(tmp_path, 12), 5,
                                      "fmnist_vqgan")
    assert alone["global_step"] == resumed["global_step"] == 12
    assert len(alone["optimizers"]) == 2 and len(alone["optimizers"][1]["state"]) > 0
    assert any(k.startswith("adversarial.discriminator.") for k in alone["module"])
    assert any(k.startswith("adversarial.lecam.") for k in alone["module"])
    assert any(k.startswith("module.") for k in alone["callbacks"]["WeightEMA"]["average"])
    assert_same_state(alone, resumed)


@needs_fashion_mnist
def test_fit_vqgan_recipe_30_steps_from_the_cli(tmp_path: Path) -> None:
    run = vqtok_cli(["fit", *_fmnist_vqgan_args(tmp_path, 30),
                     f"--trainer.logger.init_args.save_dir={tmp_path}"],
                    tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    version = tmp_path / "fmnist_vqgan" / "version_0"
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    assert ckpt["global_step"] == 30
    opt_ae, opt_d = ckpt["optimizer_states"]  # both optimizers, with Adam moments
    adversarial = ckpt["hyper_parameters"]["adversarial"]
    disc = registry.build(adversarial["init_args"]["discriminator"])
    assert len(opt_d["state"]) == len(list(disc.parameters()))
    assert all("exp_avg" in s for s in opt_d["state"].values())
    assert len(opt_ae["state"]) > len(opt_d["state"])
    assert adversarial["init_args"]["discriminator"]["class_path"].endswith(
        "PatchDiscriminator")
    # every term is logged; the discriminator's only from disc_start
    rows = list(csv.DictReader((version / "metrics.csv").open()))
    logged = {int(r["step"]): r for r in rows if r.get("train/loss")}
    for key in ("recon", "g_loss", "adaptive_weight", "d_loss", "lecam", "logits_real",
                "logits_fake"):
        assert logged[29][f"train/{key}"] != "", key
    assert logged[1]["train/d_loss"] == ""
    # the export is the autoencoder alone (its moving average), and loads
    tokenizer_dir = version / "tokenizer"
    weights = load_file(tokenizer_dir / "model.safetensors")
    assert not [k for k in weights if not k.startswith(("encoder.", "quantizer.", "decoder."))]
    average = ckpt["callbacks"]["WeightEMA"]["average"]
    expected = {k.removeprefix("module."): v for k, v in average.items()
                if k.startswith("module.")}
    assert set(weights) <= set(expected)
    assert all(torch.equal(weights[k], expected[k]) for k in weights)
    assert "discriminator" not in json.dumps(json.loads(
        (tokenizer_dir / "config.json").read_text()))
    tok = ImageTokenizer.from_pretrained(tokenizer_dir)
    ids = tok.encode(Image.new("L", (32, 32)))
    assert ids.shape == (1, 8, 8)
