"""``vqtok fit`` starting from a converted tokenizer (docs/interop.md#fine-tuning): every
weight loaded, the codebook kept, the discriminator, LPIPS and weight average of the
trainer on top, and the export again a tokenizer directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import vqtok_cli
from tests.interop.test_diffusers import diffusers_vqmodel
from vqtok.formats.lpips_weights import write_lpips_weights
from vqtok.formats.tokenizer_dir import load_tokenizer_dir
from vqtok.interop import convert
from vqtok.models.lpips import LPIPS
from vqtok.quantizers import VectorQuantizer
from vqtok.training.cli import run_tokenizer_cli
from vqtok.training.module import TokenizerModule

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "experiments" / "photos_finetune_converted.yaml"


def converted_tokenizer(folder: Path) -> Path:
    """A small diffusers f8 VQModel with attention, converted: the tokenizer to start from."""
    diffusers_vqmodel(4, True, 64, seed=21).save_pretrained(folder / "vq")
    out, _ = convert("diffusers", folder / "vq", folder / "tok")
    return out


def fit_args(tmp_path: Path, start: Path, steps: int) -> list[str]:
    """experiments/photos_finetune_converted.yaml at test size, the discriminator and LPIPS
    (random weights: their values do not matter here) from the first step."""
    lpips = tmp_path / "lpips.safetensors"
    write_lpips_weights(lpips, LPIPS.random(seed=0).weights())
    return ["fit", f"--config={CONFIG}", f"--model.init_from={start}",
            f"--model.reconstruction.init_args.lpips_weights={lpips}",
            "--model.reconstruction.init_args.perceptual_weight=1.0",
            "--model.adversarial.init_args.start=1",
            "--model.adversarial.init_args.discriminator.init_args.n_layers=2",
            "--model.adversarial.init_args.discriminator.init_args.channels=8",
            "--model.optimizer.lr=1e-4", "--model.optimizer.warmup_steps=0",
            "--data.init_args.patch_size=32", "--data.init_args.train_patches=16",
            "--data.init_args.val_patches=4", "--data.init_args.batch_size=4",
            f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}",
            "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.default_root_dir={tmp_path}", f"--export_dir={tmp_path / 'export'}"]


def test_start_holds_every_converted_weight(tmp_path: Path) -> None:
    start = converted_tokenizer(tmp_path)
    module = TokenizerModule(init_from=str(start))
    model, config = load_tokenizer_dir(start)
    assert module.normalization.as_dict() == config["normalization"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(module.model.state_dict()[name], tensor), name
    assert bool(module.quantizer.initialized)  # never re-initialised from data
    assert module.hparams["init_from"] is None  # checkpoints rebuild from the specs alone
    assert module.hparams["encoder"]["class_path"] == "vqtok.models.vqgan.VQGANEncoder"


def test_given_modules_must_fit_the_weights(tmp_path: Path) -> None:
    start = converted_tokenizer(tmp_path)
    ema = VectorQuantizer(64, 4, ema_decay=0.99, init="normal")  # another codebook training
    with pytest.raises(ValueError, match=f"init_from {start}: its weights do not fit"):
        TokenizerModule(init_from=str(start), quantizer=ema)


def test_fit_a_few_steps_with_discriminator_lpips_and_ema_then_export(tmp_path: Path) -> None:
    start = converted_tokenizer(tmp_path)
    cli = run_tokenizer_cli(fit_args(tmp_path, start, steps=3))
    assert cli.trainer.global_step == 3
    assert torch.isfinite(cli.trainer.callback_metrics["train/d_loss"])
    assert torch.isfinite(cli.trainer.callback_metrics["train/perceptual"])
    exported = load_file(tmp_path / "export" / "model.safetensors")
    before = load_file(start / "model.safetensors")
    assert exported.keys() == before.keys()
    moved = [k for k in before if not torch.equal(exported[k], before[k])]
    assert moved and "quantizer.codebook" in moved  # trained, the codebook with the rest
    # the exported average stays near the start it was initialised from
    change = (exported["quantizer.codebook"] - before["quantizer.codebook"]).abs().max()
    assert change < 0.01


@pytest.mark.slow  # about a minute: 30 steps through the command in a new process
def test_fit_30_steps_from_the_command(tmp_path: Path) -> None:
    start = converted_tokenizer(tmp_path)
    run = vqtok_cli(fit_args(tmp_path, start, steps=30), tmp_path,
                    env={"OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    run_dir = tmp_path / "photos_finetune_converted" / "version_0"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 30 and len(ckpt["optimizer_states"]) == 2
    model, _ = load_tokenizer_dir(tmp_path / "export")
    assert type(model.encoder).__name__ == "VQGANEncoder"
