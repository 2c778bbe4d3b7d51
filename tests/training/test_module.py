"""TokenizerModule: fast_dev_run for each quantizer, loss composition, checkpoints."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vqtok.models import Decoder, Encoder
from vqtok.quantizers import FSQ, SimVQ, VectorQuantizer
from vqtok.training.checkpoint import load_tokenizer_module
from vqtok.training.module import TokenizerModule
from vqtok.training.objectives import Reconstruction
from vqtok.training.optim import AdamWConfig

DIM = 8
QUANTIZERS = {
    "vq_ste": lambda: VectorQuantizer(64, DIM),
    "vq_rotation": lambda: VectorQuantizer(64, DIM, grad_estimator="rotation"),
    "vq_ema": lambda: VectorQuantizer(64, DIM, ema_decay=0.9, restart_threshold=1e-3),
    "simvq": lambda: SimVQ(64, DIM),
    "fsq": lambda: FSQ([4, 4, 4], dim=DIM),
}


def tiny_module(quantizer, **kwargs) -> TokenizerModule:
    enc = Encoder(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, dim=DIM)
    dec = Decoder(out_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, dim=DIM)
    return TokenizerModule(enc, quantizer, dec, **kwargs)


def loader(n: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 16, 16, generator=g) * 2 - 1
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=4)


def trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    defaults = {
        "default_root_dir": tmp_path, "logger": False, "enable_progress_bar": False,
        "enable_model_summary": False, "enable_checkpointing": False, "accelerator": "cpu",
    }
    return pl.Trainer(**{**defaults, **kwargs})


@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_fast_dev_run_each_quantizer(name: str, tmp_path: Path) -> None:
    module = tiny_module(QUANTIZERS[name]())
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer(tmp_path, fast_dev_run=True).fit(module, loader(), loader())
    metrics = module.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"])
    for key in ("val/psnr", "val/ssim", "val/usage", "val/perplexity", "val/dead_codes"):
        assert key in metrics, key
    changed = [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("model.encoder.") for k in changed)


def test_loss_is_recon_plus_weighted_quantizer_losses() -> None:
    torch.manual_seed(0)
    module = tiny_module(VectorQuantizer(64, DIM, init="normal"), loss_weights={"commitment": 3.0})
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    out = module(x)
    terms = module.compute_losses(x, out)
    by_hand = (out.x_hat - x).abs().mean() + out.quant.losses["codebook"] + (
        3.0 * out.quant.losses["commitment"]
    )
    torch.testing.assert_close(terms["loss"], by_hand)
    module_mse = tiny_module(FSQ([4, 4, 4], dim=DIM), reconstruction=Reconstruction("mse"))
    out = module_mse(x)
    torch.testing.assert_close(module_mse.compute_losses(x, out)["loss"], ((out.x_hat - x) ** 2).mean())


def test_bad_pixel_loss_is_rejected() -> None:
    with pytest.raises(ValueError, match="pixel_loss"):
        Reconstruction("huber")


def test_checkpoint_loads_weights_only_and_rebuilds(tmp_path: Path) -> None:
    module = tiny_module(VectorQuantizer(64, DIM))
    t = trainer(tmp_path, max_steps=2, limit_val_batches=1)
    t.fit(module, loader(), loader())
    ckpt = tmp_path / "model.ckpt"
    t.save_checkpoint(ckpt)
    raw = torch.load(ckpt, weights_only=True)  # no pickled objects in the checkpoint
    assert raw["hyper_parameters"]["quantizer"]["class_path"].endswith("VectorQuantizer")
    loaded = load_tokenizer_module(ckpt)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    module.eval()
    torch.testing.assert_close(loaded(x).x_hat, module(x).x_hat, rtol=0, atol=0)


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_tokenizer_module(tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.ckpt"):
        load_tokenizer_module(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1.0}}, foreign)
    with pytest.raises(ValueError, match="not a vqtok tokenizer checkpoint"):
        load_tokenizer_module(foreign)


def test_the_optimizer_block_checks_its_options_and_names_the_unknown_ones() -> None:
    assert AdamWConfig.build(None) == AdamWConfig()
    given = AdamWConfig.build({"lr": 2e-4, "betas": [0.5, 0.9]})
    assert given.lr == 2e-4 and given.betas == (0.5, 0.9)  # YAML lists become tuples
    with pytest.raises(ValueError, match="unknown option.*warmup"):
        AdamWConfig.build({"warmup": 10})
    for bad in ({"lr": 0.0}, {"betas": (0.9, 1.0)}, {"min_lr_ratio": 2.0},
                {"warmup_steps": -1}):
        with pytest.raises(ValueError, match="optimizer\\."):
            AdamWConfig.build(bad)


def test_the_module_trains_with_the_optimizer_block_it_is_given() -> None:
    """lr, betas and weight decay reach AdamW's parameter groups (decay on the encoder's and
    decoder's matrices only), and a config's block is what the checkpoint records."""
    module = tiny_module(FSQ([4, 4, 4], dim=8), optimizer={"lr": 2e-4, "betas": (0.8, 0.9), "weight_decay": 0.05})
    assert module.hparams["optimizer"] == {"lr": 2e-4, "betas": (0.8, 0.9),
                                           "weight_decay": 0.05, "warmup_steps": 0,
                                           "min_lr_ratio": 1.0}
    opt = module.configure_optimizers()["optimizer"]
    decay, plain = opt.param_groups
    assert decay["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert all(g["lr"] == 2e-4 and g["betas"] == (0.8, 0.9) for g in opt.param_groups)
    assert all(p.ndim >= 2 for p in decay["params"])
    assert len(inspect.signature(TokenizerModule).parameters) <= 12
