"""Every config in experiments/ parses and trains two steps on tiny data, then exports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import has_fashion_mnist, needs_fashion_mnist
from vqtok.tokenizer import ImageTokenizer
from vqtok.training.cli import run_tokenizer_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments").glob("*.yaml"))

TINY_DATA = {
    "PhotoDataModule": [
        "--data.init_args.train_patches=4",
        "--data.init_args.val_patches=2",
        "--data.init_args.batch_size=2",
    ],
    "FashionMNISTDataModule": [
        "--data.init_args.limit_train=8",
        "--data.init_args.val_size=4",
        "--data.init_args.batch_size=4",
    ],
}


def test_there_is_a_config_per_quantizer_and_dataset() -> None:
    names = {p.stem for p in CONFIGS}
    for data in ("photos", "fmnist"):
        for q in ("vq_ste", "vq_rotation", "vq_ema", "simvq", "fsq", "lfq", "bsq", "residual_vq"):
            assert f"{data}_{q}" in names


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_trains_two_steps_and_exports(config: Path, tmp_path: Path) -> None:
    text = config.read_text()
    data_args = next(args for name, args in TINY_DATA.items() if name in text)
    if "FashionMNIST" in text and not has_fashion_mnist():
        pytest.skip(needs_fashion_mnist.kwargs["reason"])
    export = tmp_path / "tokenizer"
    cli = run_tokenizer_cli(
        [
            "fit",
            f"--config={config}",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.default_root_dir={tmp_path}",
            f"--export_dir={export}",
            *data_args,
        ]
    )
    assert cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert "val/usage" in cli.trainer.callback_metrics
    tok = ImageTokenizer.from_pretrained(export)
    assert tok.codebook_size == cli.model.quantizer.codebook_size
    # the run's config sits beside its history: `vqtok report` reads its data section
    saved = yaml.safe_load((Path(cli.trainer.log_dir) / "config.yaml").read_text())
    assert saved["data"]["class_path"].startswith("vqtok.training.data.")


def test_configs_work_from_any_checkout() -> None:
    # data comes from the package or the data cache, never from beside the repository
    for config in [*CONFIGS, *sorted((ROOT / "experiments").glob("*/*.yaml"))]:
        assert "../" not in config.read_text(), config.name


def test_the_demo_config_ships_with_the_package() -> None:
    # experiments/photos_fsq.yaml is the packaged config itself, not a copy of it
    packaged = ROOT / "vqtok" / "configs" / "photos_fsq.yaml"
    assert (ROOT / "experiments" / "photos_fsq.yaml").resolve() == packaged.resolve()
