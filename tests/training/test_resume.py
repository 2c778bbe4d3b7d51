"""Exact resume: a run stopped by SIGTERM at step k (mid-epoch) and resumed with --ckpt_path
ends with the same weights, codebooks, quantizer buffers, optimizer states, learning-rate
schedule and codebook history, bit for bit, as the same run left alone (on the CPU).

Docs: docs/training.md#exact-resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import (
    FASHION_MNIST,
    ROOT,
    assert_same_state,
    needs_fashion_mnist,
    vqtok_cli,
)
from tests.training.test_distributed import THREADS, decoder_args
from vqtok.training import data
from vqtok.training.cli import VqtokCLI, run_tokenizer_cli


def _callbacks(tmp_path: Path, name: str, stop_at: int | None) -> str:
    callbacks = [{"class_path": "tests.helpers.DumpState",
                  "init_args": {"dirpath": str(tmp_path / name)}}]
    if stop_at is not None:
        callbacks.append({"class_path": "tests.helpers.SigtermAtStep",
                          "init_args": {"step": stop_at}})
    path = tmp_path / f"{name}-{stop_at}.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return str(path)


def _stop_and_resume(tmp_path: Path, command: list[str], args: list[str], stop_at: int,
                     run_name: str) -> tuple[dict, dict]:
    """(state of the run left alone, state of the run stopped at ``stop_at`` and resumed)."""
    def save_dir(name: str) -> str:
        return f"--trainer.logger.init_args.save_dir={tmp_path / name}"

    alone = vqtok_cli([*command, *args, save_dir("alone"), "--config",
                       _callbacks(tmp_path, "alone", None)], tmp_path, env=THREADS)
    assert alone.returncode == 0, alone.stderr[-3000:]
    stopped = vqtok_cli([*command, *args, save_dir("stopped"), "--config",
                         _callbacks(tmp_path, "stopped", stop_at)], tmp_path, env=THREADS)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    last = tmp_path / "stopped" / run_name / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == stop_at
    resumed = vqtok_cli([*command, *args, save_dir("stopped"), f"--ckpt_path={last}",
                         "--config", _callbacks(tmp_path, "resumed", None)], tmp_path,
                        env=THREADS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr  # Lightning's warning for plain loaders
    return tuple(torch.load(tmp_path / name / "rank0.pt", weights_only=True)
                 for name in ("alone", "resumed"))


@needs_fashion_mnist
@pytest.mark.parametrize(("stop_at", "val_every"),
                         [(5, 4), pytest.param(8, 5, marks=pytest.mark.slow)],
                         ids=["mid-epoch", "epoch-end"])
def test_vq_ema_with_restarts_resumes_bit_for_bit(tmp_path: Path, stop_at: int,
                                                  val_every: int) -> None:
    # 64 images in batches of 8: 8 steps an epoch. Stopped at step 5 of 12 (mid-epoch 0,
    # after the validation of step 4, before those of steps 8 and 12) or at step 8 (the
    # epoch's end, between validations at 5 and 10); dead codes restart often (random rows
    # of the batch) and the learning rate decays every step.
    args = [f"--config={ROOT / 'experiments' / 'fmnist_vq_ema.yaml'}",
            f"--data.init_args.root={FASHION_MNIST}", "--data.init_args.limit_train=64",
            "--data.init_args.val_size=16", "--data.init_args.batch_size=8",
            "--model.quantizer.init_args.restart_threshold=0.5",
            "--model.quantizer.init_args.usage_decay=0.5", "--model.optimizer.warmup_steps=3",
            "--model.optimizer.min_lr_ratio=0.1", "--codebook_history.init_args.every_n_steps=1",
            *(f"--model.{part}.init_args.{k}={v}" for part in ("encoder", "decoder")
              for k, v in (("channels", 8), ("num_groups", 4))),
            "--trainer.max_steps=12", f"--trainer.val_check_interval={val_every}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    alone, resumed = _stop_and_resume(tmp_path, ["fit"], args, stop_at, "fmnist_vq_ema")
    assert alone["global_step"] == resumed["global_step"] == 12
    assert len(alone["callbacks"]["CodebookHistory"]["validations"]) == 12 // val_every
    assert alone["lrs"][0][0] < 1e-3  # decayed: the schedule's position was resumed
    if stop_at == 8:
        # Lightning counts the epoch one ahead after resuming from a checkpoint written at
        # an epoch's last batch (docs/training.md#exact-resume); steps and all else agree.
        history = resumed["callbacks"]["CodebookHistory"]
        for record in history["validations"] + history["train"]:
            record["epoch"] -= record["step"] > stop_at
    assert_same_state(alone, resumed)


@pytest.mark.slow  # ~40 s
@needs_fashion_mnist
def test_decoder_resumes_mid_epoch_bit_for_bit(tmp_path: Path) -> None:
    from tests.lm.test_train import tiny_tokenizer_dir

    tokenizer = tiny_tokenizer_dir(tmp_path / "tok")
    args = decoder_args(tmp_path, tokenizer, 12)
    args = [a for a in args if "save_dir" not in a]
    alone, resumed = _stop_and_resume(tmp_path, ["decoder", "fit"], args, 5, "decoder_fmnist")
    assert alone["global_step"] == 12
    assert_same_state(alone, resumed)


# ---- in one process, on the embedded photos: where a resumed run writes, what it refuses --
def tiny_fit(tmp_path: Path, *args: str) -> VqtokCLI:
    """`vqtok fit` of a tiny FSQ tokenizer on 16-pixel patches of the embedded photos, 4
    batches an epoch, into ``tmp_path/runs/tiny/version_N``; 3 steps unless told."""
    config = tmp_path / "tiny.yaml"
    config.write_text(f"""
seed_everything: 0
trainer:
  max_steps: 3
  log_every_n_steps: 1
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {tmp_path / "runs"}, name: tiny}}
model:
  encoder: {{class_path: vqtok.models.Encoder, init_args: {{in_channels: 3, channels: 8,
            channel_mult: [1, 2], num_res_blocks: 1, dim: 8}}}}
  quantizer: {{class_path: vqtok.quantizers.FSQ, init_args: {{levels: [4, 4, 4], dim: 8}}}}
  decoder: {{class_path: vqtok.models.Decoder, init_args: {{out_channels: 3, channels: 8,
            channel_mult: [1, 2], num_res_blocks: 1, dim: 8}}}}
data:
  class_path: vqtok.training.data.PhotoDataModule
  init_args: {{patch_size: 16, train_patches: 16, val_patches: 4, batch_size: 4}}
""")
    return run_tokenizer_cli(["fit", "--config", str(config), *args])


def _steps(metrics: Path) -> set[int]:
    with open(metrics, newline="") as f:
        return {int(row["step"]) for row in csv.DictReader(f)}


def test_resume_continues_in_the_run_directory_of_its_checkpoint(tmp_path: Path) -> None:
    tiny_fit(tmp_path)
    run = tmp_path / "runs" / "tiny" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    assert max(_steps(run / "metrics.csv")) == 2

    tiny_fit(tmp_path, f"--ckpt_path={last}", "--trainer.max_steps=6")
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6
    # the run's metrics kept, the resumed steps appended
    assert _steps(run / "metrics.csv") >= {0, 1, 2, 3, 4, 5}
    assert (run / "tokenizer" / "config.json").is_file()

    # ... and a resumed run still refuses a run directory holding another run
    other = run.parent / "version_1"
    other.mkdir()
    (other / "metrics.csv").write_text("step\n0\n")
    with pytest.raises(ValueError, match=r"version_1 already holds a run"):
        tiny_fit(tmp_path, f"--ckpt_path={last}", "--trainer.max_steps=9",
                 "--trainer.logger.init_args.version=1")
    assert (other / "metrics.csv").read_text() == "step\n0\n"


@pytest.mark.parametrize("trained_with_torchdata", [False, True])
def test_mid_epoch_resume_without_torchdata_refuses(tmp_path: Path, monkeypatch,
                                                    trained_with_torchdata: bool) -> None:
    def without_torchdata() -> None:  # plain DataLoaders, which restart the epoch
        monkeypatch.setattr(data, "StatefulDataLoader", None)
        monkeypatch.setattr(data, "RESUMABLE_LOADERS", False)

    if not trained_with_torchdata:
        without_torchdata()
    tiny_fit(tmp_path)  # 3 steps of a 4-batch epoch: last.ckpt is mid-epoch
    last = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    without_torchdata()
    with pytest.raises(RuntimeError, match=r"resuming .* needs the torchdata package") as err:
        tiny_fit(tmp_path, f"--ckpt_path={last}", "--trainer.max_steps=6")
    assert "\n" not in str(err.value) and str(last) in str(err.value)
    assert last.read_bytes() == before
