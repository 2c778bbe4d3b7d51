"""Exact resume: a run stopped by SIGTERM at step k (mid-epoch) and resumed with --ckpt_path
ends with the same weights, codebooks, quantizer buffers, optimizer states, learning-rate
schedule and codebook history, bit for bit, as the same run left alone (on the CPU).

Docs: docs/training.md#exact-resume."""

from __future__ import annotations

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
            "--model.quantizer.init_args.usage_decay=0.5", "--model.warmup_steps=3",
            "--model.min_lr_ratio=0.1", "--codebook_history.init_args.every_n_steps=1",
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
    from tests.training.test_decoder import tiny_tokenizer_dir

    tokenizer = tiny_tokenizer_dir(tmp_path / "tok")
    args = decoder_args(tmp_path, tokenizer, 12)
    args = [a for a in args if "save_dir" not in a]
    alone, resumed = _stop_and_resume(tmp_path, ["decoder", "fit"], args, 5, "decoder_fmnist")
    assert alone["global_step"] == 12
    assert_same_state(alone, resumed)
