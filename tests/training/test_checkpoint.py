"""How `vqtok fit` writes and reads checkpoints (vqtok/training/checkpoint.py): a write that
fails (a full disk) leaves the previous checkpoint whole and says so in one line naming the
folder; an empty or truncated checkpoint given to --ckpt_path is named in one line; a
checkpoint in the flat layout (every objective and averaging option a hyper-parameter of
its own) still exports, and --ckpt_path refuses it in one line.

Docs: docs/training.md#exact-resume."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.test_resume import tiny_fit
from vqtok.formats import atomic
from vqtok.formats.schema import FormatError
from vqtok.training.checkpoint import load_tokenizer_module


def _checkpoint_io(tmp_path: Path):
    """The CheckpointIO that `vqtok fit` trains with (and that run's last.ckpt)."""
    cli = tiny_fit(tmp_path)
    return cli.trainer.strategy.checkpoint_io, tmp_path / "runs/tiny/version_0/checkpoints"


class _DiskFull:
    """``open`` for the atomic writer whose files take ``room`` bytes, then fail as a full
    disk does (ENOSPC), after writing what fitted."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115 - returned to the caller
        disk = self
        real_write = f.write

        class Limited:
            def __getattr__(self, name):
                return getattr(f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                if len(data) > disk.room:
                    real_write(bytes(data[: disk.room]))
                    disk.room = 0
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                disk.room -= len(data)
                return real_write(data)

        return Limited()


def test_a_full_disk_leaves_the_previous_checkpoint_whole(tmp_path: Path, monkeypatch) -> None:
    io, folder = _checkpoint_io(tmp_path)
    last = folder / "last.ckpt"
    before = last.read_bytes()
    monkeypatch.setattr(atomic, "open", _DiskFull(room=len(before) // 4), raising=False)
    bigger = {"state_dict": {"w": torch.ones(100_000)}}
    with pytest.raises(OSError, match="disk is full") as err:
        io.save_checkpoint(bigger, last)
    message = str(err.value)
    assert "\n" not in message and str(folder) in message
    assert last.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # no temporary left


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs: a real file system that fills up (needs root and mount rights)."""
    where = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(where)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_real_full_disk_leaves_the_previous_checkpoint_whole(tmp_path: Path,
                                                               small_tmpfs: Path) -> None:
    io, _ = _checkpoint_io(tmp_path)
    last = small_tmpfs / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(25_000)}}, last)  # 100 kB
    before = last.read_bytes()
    with pytest.raises(OSError, match="disk is full") as err:
        io.save_checkpoint({"state_dict": {"w": torch.ones(250_000)}}, last)  # 1 MB
    assert "\n" not in str(err.value) and str(last.parent) in str(err.value)
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("keep", [0, 0.5], ids=["empty", "truncated"])
def test_a_broken_checkpoint_is_named_in_one_line(tmp_path: Path, keep: float) -> None:
    tiny_fit(tmp_path)
    last = tmp_path / "runs/tiny/version_0/checkpoints/last.ckpt"
    whole = last.read_bytes()
    last.write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(FormatError, match="empty|truncated or corrupt") as err:
        tiny_fit(tmp_path, f"--ckpt_path={last}", "--trainer.max_steps=6")
    assert "\n" not in str(err.value) and str(last) in str(err.value)


def _flat_layout(ckpt: dict) -> dict:
    """A checkpoint rewritten into the flat layout: each option of the objectives and of
    the weight average its own hyper-parameter, the discriminator's and LeCam's weights at
    the top of the state, the average under ``ema.module.``."""
    hp = dict(ckpt["hyper_parameters"])
    rec = hp.pop("reconstruction")["init_args"]
    adv = dict(hp.pop("adversarial")["init_args"])
    hp.update(recon_loss=rec["pixel_loss"], lpips_weights=rec["lpips_weights"],
              perceptual_weight=rec["perceptual_weight"],
              discriminator=adv.pop("discriminator"), disc_weight=adv.pop("weight"),
              disc_start=adv.pop("start"), disc_lr=adv.pop("lr"), disc_betas=adv.pop("betas"),
              ema_decay=0.5, export_ema=True, **adv)
    state = {k.removeprefix("adversarial."): v for k, v in ckpt["state_dict"].items()}
    average = ckpt["callbacks"].pop("WeightEMA")["average"]
    state.update({f"ema.{k}": v for k, v in average.items()})
    return {**ckpt, "hyper_parameters": hp, "state_dict": state}


def test_a_flat_layout_checkpoint_exports_its_average_and_refuses_to_resume(
        tmp_path: Path) -> None:
    adversarial = {"class_path": "vqtok.training.objectives.Adversarial", "init_args": {
        "discriminator": {"class_path": "vqtok.models.PatchDiscriminator",
                          "init_args": {"in_channels": 3, "channels": 4, "n_layers": 1}},
        "start": 1, "lecam_weight": 0.1}}
    ema = {"class_path": "vqtok.training.callbacks.WeightEMA", "init_args": {"decay": 0.5}}
    tiny_fit(tmp_path, f"--model.adversarial={json.dumps(adversarial)}",
             f"--ema={json.dumps(ema)}")
    run = tmp_path / "runs/tiny/version_0"
    flat = tmp_path / "flat.ckpt"
    torch.save(_flat_layout(torch.load(run / "checkpoints/last.ckpt", weights_only=True)), flat)
    # `vqtok export` of it writes what the run exported: the weights' average
    module = load_tokenizer_module(flat)
    exported = load_file(run / "tokenizer/model.safetensors")
    state = module.model.state_dict()
    assert exported.keys() <= state.keys()
    assert all(torch.equal(exported[k], state[k]) for k in exported)
    assert module.adversarial.start == 1 and module.adversarial.lecam is not None
    # resuming it is refused in one line that says what still works
    with pytest.raises(ValueError, match="names its training options one by one") as err:
        tiny_fit(tmp_path, f"--ckpt_path={flat}", "--trainer.max_steps=6")
    assert "\n" not in str(err.value) and "vqtok export" in str(err.value)


def test_a_checkpoint_with_the_optimizer_options_one_by_one_exports_and_resumes(
        tmp_path: Path) -> None:
    """Checkpoints that name ``lr``, ``warmup_steps``... as hyper-parameters of their own
    (before they became one ``optimizer`` block) rebuild with those options and resume."""
    tiny_fit(tmp_path, "--model.optimizer.lr=0.003", "--model.optimizer.warmup_steps=2")
    run = tmp_path / "runs/tiny/version_0"
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    written = dict(ckpt["hyper_parameters"]["optimizer"])
    assert written["lr"] == 0.003 and written["warmup_steps"] == 2
    hp = dict(ckpt["hyper_parameters"])
    hp.update(hp.pop("optimizer"))
    old = tmp_path / "old.ckpt"
    torch.save({**ckpt, "hyper_parameters": hp}, old)
    module = load_tokenizer_module(old)
    assert module.hparams["optimizer"] == written
    resumed = tiny_fit(tmp_path, f"--ckpt_path={old}", "--trainer.max_steps=5",
                       "--model.optimizer.lr=0.003", "--model.optimizer.warmup_steps=2")
    assert resumed.trainer.global_step == 5
