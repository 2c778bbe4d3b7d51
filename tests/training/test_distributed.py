"""`vqtok fit` under several processes (Lightning's DDP strategy, gloo on the CPU), as a user
runs it: every rank ends with the same weights, codebooks, quantizer buffers and optimizer
states, bit for bit; validation counts every rank's data and equals a one-process
validation of the same checkpoint on the same data (and a float64 re-computation of it);
rank 0 alone writes the run (history, checkpoint, export), which `vqtok report` reads.

Docs: docs/training.md#several-processes."""

from __future__ import annotations

import csv
import importlib
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.helpers import (
    FASHION_MNIST,
    ROOT,
    assert_same_state,
    has_fashion_mnist,
    needs_fashion_mnist,
    vqtok_cli,
)
from tests.interop.test_finetune import converted_tokenizer
from vqtok.cli import main
from vqtok.formats.history import read_history
from vqtok.training.checkpoint import load_tokenizer_module
from vqtok.training.cli import run_tokenizer_cli
from vqtok.training.data import (
    FashionMNISTDataModule,
    MovingFashionMNISTDataModule,
    PhotoDataModule,
)

# Small enough for seconds: 64 training images, 32 validation images (16 per rank, so the
# distributed sampler pads nothing), 8 per batch per rank.
FMNIST = {"limit_train": 64, "val_size": 32, "batch_size": 8}
# Tiny data for each DataModule a config in experiments/ names, as init_args; every key must
# be a parameter of that DataModule (test_tiny_data_fits_each_configs_datamodule).
TINY_DATA = {
    FashionMNISTDataModule: {"root": str(FASHION_MNIST), **FMNIST},
    PhotoDataModule: {"train_patches": 32, "val_patches": 8, "batch_size": 4,
                      "patch_size": 32},
    # 9-frame clips of 32 x 32 (4x in time, 8x in space: 3 x 4 x 4 ids), 4 validation clips
    MovingFashionMNISTDataModule: {"root": str(FASHION_MNIST), "train_clips": 16,
                                   "val_clips": 4, "num_frames": 9, "size": 32,
                                   "batch_size": 2},
}
DDP = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]
THREADS = {"OMP_NUM_THREADS": "1"}  # two ranks on a two-core machine


def _quiet(tmp_path: Path, steps: int, val_every: int) -> list[str]:
    return [f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={val_every}",
            "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]


def _dump_config(tmp_path: Path) -> str:
    """A config adding the callback that saves each rank's final state."""
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "tests.helpers.DumpState",
         "init_args": {"dirpath": str(tmp_path / "ranks")}}]}}))
    return str(path)


def _ranks(tmp_path: Path) -> list[dict]:
    return [torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _metrics_row(run: Path, key: str) -> dict[str, str]:
    with open(run / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get(key)]
    return rows[-1]


@torch.no_grad()
def _reference(ckpt: Path) -> tuple[np.ndarray, float]:
    """Counts of the code ids and the PSNR (float64, data range 2) of the checkpoint's
    reconstructions of the whole validation set, in one process."""
    module = load_tokenizer_module(ckpt)
    data = FashionMNISTDataModule(root=str(FASHION_MNIST), **FMNIST)
    data.setup("fit")
    x = torch.stack([data.val_set[i][0] for i in range(len(data.val_set))])
    out = module.model(x)
    k = module.quantizer.codebook_size
    counts = np.bincount(out.quant.indices.reshape(-1).numpy(), minlength=k)
    mse = (out.x_hat.double().clamp(-1, 1) - x.double()).pow(2).mean()
    return counts, float(10 * torch.log10(4.0 / mse))


@needs_fashion_mnist
def test_two_processes_train_identical_ranks_and_validate_both_ranks_data(tmp_path: Path,
                                                                          capsys) -> None:
    config = ROOT / "experiments" / "fmnist_vq_ema.yaml"
    # a restart threshold that dead codes reach within the run, so restarts are exercised
    quantizer = ["--model.quantizer.init_args.restart_threshold=0.5",
                 "--model.quantizer.init_args.usage_decay=0.5",
                 "--codebook_history.init_args.every_n_steps=2"]
    done = vqtok_cli(["fit", f"--config={config}", "--config", _dump_config(tmp_path), *DDP,
                      *_quiet(tmp_path, 6, 3), *_data_args(FashionMNISTDataModule),
                      *quantizer], tmp_path, env=THREADS)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted((tmp_path / "runs" / "fmnist_vq_ema").iterdir())
    assert [r.name for r in runs] == ["version_0"]  # one run folder, made by rank 0
    run = runs[0]

    # every rank holds the same model, codebook, EMA statistics, usage and optimizer
    rank0, rank1 = _ranks(tmp_path)
    assert rank0["global_step"] == rank1["global_step"] == 6
    assert {"model.quantizer.codebook", "model.quantizer.ema_count", "model.quantizer.ema_sum",
            "model.quantizer.usage", "model.quantizer.initialized"} <= set(rank0["module"])
    assert_same_state(rank0["module"], rank1["module"], "module")
    assert_same_state(rank0["optimizers"], rank1["optimizers"], "optimizers")
    ckpt_path = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert_same_state(ckpt["state_dict"], rank0["module"], "checkpoint")

    # validation counted both ranks' images: the float64 one-process reference agrees
    counts, psnr = _reference(ckpt_path)
    doc, history_counts = read_history(run)
    assert [v["step"] for v in doc["validations"]] == [3, 6]
    tokens = FMNIST["val_size"] * (32 // 4) ** 2
    assert counts.sum() == tokens and history_counts[-1].sum() == tokens
    np.testing.assert_array_equal(history_counts[-1], counts)
    last = doc["validations"][-1]
    k = counts.size
    assert last["usage"] == np.count_nonzero(counts) / k
    p = counts[counts > 0] / counts.sum()
    assert math.isclose(last["perplexity"], math.exp(-(p * np.log(p)).sum()), rel_tol=1e-12)
    assert last["psnr"] == pytest.approx(psnr, abs=1e-3)
    logged = _metrics_row(run, "val/usage")
    assert float(logged["val/usage"]) == pytest.approx(last["usage"], abs=1e-7)
    assert float(logged["val/psnr"]) == pytest.approx(psnr, abs=1e-3)
    # a train-time curve written once (rank 0), not once per rank
    assert [t["step"] for t in doc["train"]] == [1, 2, 4, 6]

    # ... and `vqtok validate` of that checkpoint in one process gives the same numbers
    cli = run_tokenizer_cli(["validate", f"--config={config}", f"--ckpt_path={ckpt_path}",
                             "--trainer.enable_progress_bar=false", "--trainer.logger=false",
                             f"--trainer.default_root_dir={tmp_path / 'one'}",
                             "--codebook_history=null", "--checkpoint=null",
                             *_data_args(FashionMNISTDataModule)])
    single = cli.trainer.callback_metrics
    assert float(single["val/usage"]) == last["usage"]
    assert float(single["val/perplexity"]) == pytest.approx(last["perplexity"], rel=1e-6)
    assert float(single["val/psnr"]) == pytest.approx(last["psnr"], abs=1e-4)

    # the export and the report come from rank 0's files
    assert (run / "tokenizer" / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "report.html"),
                 "--samples", "2"]) == 0
    [reported] = json.loads((tmp_path / "report.json").read_text())["runs"]
    assert reported["path"] == str(run) and reported["validations"] == doc["validations"]
    assert reported["samples"]["count"] == 2


CONFIGS = sorted((ROOT / "experiments").glob("*.yaml"))


def _datamodule_of(config: Path) -> type:
    """The DataModule class a config's ``data.class_path`` names."""
    module, _, name = yaml.safe_load(config.read_text())["data"]["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)


def _data_args(datamodule: type) -> list[str]:
    return [f"--data.init_args.{k}={v}" for k, v in TINY_DATA[datamodule].items()]


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_tiny_data_fits_each_configs_datamodule(config: Path) -> None:
    # What keeps the slow test below from going stale: its options for a config are checked
    # against the signature of the DataModule the config names, in the default suite.
    datamodule = _datamodule_of(config)
    assert datamodule in TINY_DATA, f"{config.name}: no tiny data for {datamodule.__name__}"
    accepted = set(inspect.signature(datamodule).parameters)
    unknown = set(TINY_DATA[datamodule]) - accepted
    assert not unknown, f"{datamodule.__name__} takes no {sorted(unknown)}"


@pytest.mark.slow  # 19 configs x ~30 s
@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_trains_under_two_processes(config: Path, tmp_path: Path) -> None:
    datamodule = _datamodule_of(config)
    if "root" in TINY_DATA[datamodule] and not has_fashion_mnist():
        pytest.skip(needs_fashion_mnist.kwargs["reason"])
    recipe = yaml.safe_load(config.read_text())
    adversarial = recipe["model"].get("adversarial") is not None
    # the discriminator joins at step 2 of 4, so both kinds of step run under DDP
    extra = ["--model.adversarial.init_args.start=2"] if adversarial else []
    if "init_from" in recipe["model"]:  # a config that fine-tunes a converted tokenizer
        extra.append(f"--model.init_from={converted_tokenizer(tmp_path / 'start')}")
    done = vqtok_cli(["fit", f"--config={config}", "--config", _dump_config(tmp_path), *DDP,
                      *_quiet(tmp_path, 4, 4), *_data_args(datamodule), *extra], tmp_path,
                     env=THREADS)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = _ranks(tmp_path)
    assert rank0["global_step"] == 4
    # every tensor of the module: autoencoder, and where the config has them the
    # discriminator (batch-norm statistics included) and the weights' moving average
    keys = set(rank0["module"])
    if adversarial:
        assert any(k.startswith("adversarial.discriminator.") and k.endswith("running_mean")
                   for k in keys)
        assert rank0["optimizers"][1]["state"], "the discriminator never stepped"
    if recipe.get("ema") is not None:
        average = rank0["callbacks"]["WeightEMA"]["average"]
        assert {k.removeprefix("module.") for k in average if k.startswith("module.")} \
            == {k.removeprefix("model.") for k in keys if k.startswith("model.")}
        assert_same_state(average, rank1["callbacks"]["WeightEMA"]["average"], "average")
    assert_same_state(rank0["module"], rank1["module"], "module")
    assert_same_state(rank0["optimizers"], rank1["optimizers"], "optimizers")
    [run] = (tmp_path / "runs" / config.stem).iterdir()
    doc, counts = read_history(run)
    assert [v["step"] for v in doc["validations"]] == [4]
    # both ranks' validation items counted: the ids of one item times the items
    data = datamodule(**{**yaml.safe_load(config.read_text())["data"].get("init_args", {}),
                         **TINY_DATA[datamodule]})
    data.setup("validate")
    module = load_tokenizer_module(run / "checkpoints" / "last.ckpt")
    with torch.no_grad():
        ids = module.model(data.val_set[0][0][None]).quant.indices.numel()
    assert counts[-1].sum() == len(data.val_set) * ids


def decoder_args(tmp_path: Path, tokenizer: Path, steps: int) -> list[str]:
    """`vqtok decoder fit` of a tiny decoder on 64 tokenized Fashion-MNIST images."""
    return ["--config", str(ROOT / "experiments" / "decoder" / "fmnist.yaml"),
            f"--data.tokenizer={tokenizer}", f"--data.root={FASHION_MNIST}",
            "--data.limit_train=64", "--data.val_size=16", "--data.batch_size=8",
            f"--data.cache_dir={tmp_path / 'cache'}", "--model.config.d_model=32",
            "--model.config.n_layers=1", "--model.config.n_heads=2",
            f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}",
            "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]


@pytest.mark.slow  # ~40 s
@needs_fashion_mnist
def test_decoder_trains_under_two_processes(tmp_path: Path) -> None:
    from tests.lm.test_train import tiny_tokenizer_dir

    tokenizer = tiny_tokenizer_dir(tmp_path / "tok")
    done = vqtok_cli(["decoder", "fit", *decoder_args(tmp_path, tokenizer, 4), "--config",
                      _dump_config(tmp_path), *DDP], tmp_path, env=THREADS)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = _ranks(tmp_path)
    assert rank0["global_step"] == 4
    assert_same_state(rank0["module"], rank1["module"], "module")
    assert_same_state(rank0["optimizers"], rank1["optimizers"], "optimizers")
    [run] = (tmp_path / "runs" / "decoder_fmnist").iterdir()
    assert (run / "decoder" / "model.safetensors").is_file()
    assert _metrics_row(run, "val/image_loss")["step"] == "3"
