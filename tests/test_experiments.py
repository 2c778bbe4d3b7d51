"""Every config in experiments/ and vqtok/configs/ parses and trains two steps on tiny
data (an adversarial one with its discriminator on from the first step), then exports; the
collapse study runs end to end at toy sizes."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.helpers import has_fashion_mnist, needs_fashion_mnist
from vqtok.tokenizers import ImageTokenizer, VideoTokenizer
from vqtok.training.cli import run_tokenizer_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments").glob("*.yaml"))
# vqtok/configs/ ships in the package; experiments/ links to what it holds
TRAINED = sorted({p.resolve(): p for p in [*(ROOT / "vqtok" / "configs").glob("*.yaml"),
                                           *CONFIGS]}.values())

TINY_DATA = {  # the first name found in a config picks its arguments
    "MovingFashionMNISTDataModule": [
        "--data.init_args.train_clips=4",
        "--data.init_args.val_clips=2",
        "--data.init_args.batch_size=2",
        "--data.init_args.train_frames=5",
    ],
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
        for q in ("vq_ste", "vq_rotation", "vq_ema", "simvq", "ibq", "fsq", "lfq", "bsq",
                  "residual_vq"):
            assert f"{data}_{q}" in names


@pytest.mark.parametrize("config", TRAINED, ids=[p.stem for p in TRAINED])
def test_config_trains_two_steps_and_exports(config: Path, tmp_path: Path) -> None:
    text = config.read_text()
    data_args = next(args for name, args in TINY_DATA.items() if name in text)
    if yaml.safe_load(text)["model"].get("adversarial") is not None:
        data_args = [*data_args, "--model.adversarial.init_args.start=1"]
    if "FashionMNIST" in text and not has_fashion_mnist():
        pytest.skip(needs_fashion_mnist.kwargs["reason"])
    if "init_from:" in text:  # fine-tunes a converted tokenizer (docs/interop.md)
        from tests.interop.test_finetune import converted_tokenizer

        data_args = [*data_args, f"--model.init_from={converted_tokenizer(tmp_path / 'start')}",
                     "--data.init_args.patch_size=32",
                     "--model.adversarial.init_args.discriminator.init_args.n_layers=2"]
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
    if "adversarial:" in text:
        assert torch.isfinite(cli.trainer.callback_metrics["train/d_loss"])
    assert "val/usage" in cli.trainer.callback_metrics
    is_video = "VideoEncoder" in text
    tok = (VideoTokenizer if is_video else ImageTokenizer).from_pretrained(export)
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


def _collapse_study():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "collapse_study", ROOT / "experiments" / "collapse_study.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@needs_fashion_mnist
def test_collapse_study_runs_every_quantizer_and_writes_its_table(tmp_path: Path) -> None:
    study = _collapse_study()
    out = tmp_path / "RESULTS.md"
    argv = ["--quick", "--no-reference", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    assert study.main(argv) == 0
    lines = out.read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| quantizer |")))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2:]))
    # the second table: LFQ and BSQ, exact batch entropy <= its grouped bound <= log K
    gaps = [line for line in lines[start + 2 + len(table):] if line.startswith("| ")][1:]
    assert {row.split("|")[1].strip() for row in gaps} == {"lfq", "bsq"}
    for row in gaps:
        exact, bound, gap, log_k = (float(c) for c in row.split("|")[4:8])
        assert exact <= bound + 1e-3 and bound <= log_k + 1e-3
        assert gap == pytest.approx(bound - exact, abs=2e-3)
    names = {"vq_ste", "vq_rotation", "vq_ema_restart", "simvq", "ibq", "fsq", "lfq", "bsq",
             "residual_vq"}
    assert {row.split("|")[1].strip() for row in table} == names
    for name in names:
        run = tmp_path / "runs" / f"{name}-1k-vqtok"
        doc = json.loads((run / "codebook_history.json").read_text())
        counts = np.load(run / "codebook_history.npz")["counts"]
        # every test image's 7 x 7 tokens, once per residual stage, counted exactly once
        stages = doc.get("num_stages", 1)
        assert counts.sum() == 64 * 7 * 7 * stages
        assert counts.shape == (1, doc["codebook_size"] * stages)
        # the table's usage is the share of codes the test ids hit
        row = next(r for r in table if r.split("|")[1].strip() == name)
        usage = float(row.split("|")[5].strip().rstrip("%")) / 100
        assert usage == pytest.approx((counts > 0).mean(), abs=1e-3)
        tok = ImageTokenizer.from_pretrained(run / "tokenizer")
        assert tok.codebook_size == doc["codebook_size"]
    html = out.with_suffix(".html").read_text()  # one report page names every run
    assert all(f"{name}-1k-vqtok" in html for name in names)


@needs_fashion_mnist
def test_collapse_study_reference_adapter_matches_vqtok_shapes(tmp_path: Path) -> None:
    pytest.importorskip("vector_quantize_pytorch",
                        reason="needs the bench extra: pip install -e .[bench] (make bench)")
    study = _collapse_study()
    for name, factory in study.reference_quantizers("1k", quick=True).items():
        ref = factory()
        z = torch.randn(2, study.DIM, 7, 7)
        out = ref(z)
        assert out.z_q.shape == z.shape, name
        stages = ref.num_stages
        assert out.indices.shape == ((2, 7, 7, stages) if stages else (2, 7, 7)), name
        assert 0 <= int(out.indices.min()) and int(out.indices.max()) < ref.codebook_size, name
