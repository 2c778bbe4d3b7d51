"""CodebookHistory: what it records, where, when, from which rank; on by default in the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from vqtok.formats.atomic import atomic_write_bytes
from vqtok.models import Decoder, Encoder
from vqtok.quantizers import FSQ
from vqtok.training.callbacks import CodebookHistory
from vqtok.training.cli import run_tokenizer_cli
from vqtok.training.module import TokenizerModule

K = 64  # FSQ [4, 4, 4]


def tiny_module() -> TokenizerModule:
    enc = Encoder(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, dim=8)
    dec = Decoder(out_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, dim=8)
    return TokenizerModule(enc, FSQ([4, 4, 4], dim=8), dec)


def loader(n: int, seed: int) -> DataLoader:
    x = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=4)


def quiet_trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    defaults = {"default_root_dir": tmp_path, "logger": False, "enable_progress_bar": False,
                "enable_model_summary": False, "enable_checkpointing": False,
                "accelerator": "cpu"}
    return pl.Trainer(**{**defaults, **kwargs})


def test_records_validations_and_a_per_batch_curve(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = tiny_module()
    history = CodebookHistory(every_n_steps=2)
    trainer = quiet_trainer(tmp_path, max_steps=5, val_check_interval=2,
                            check_val_every_n_epoch=None, callbacks=[history],
                            num_sanity_val_steps=1)
    trainer.fit(module, loader(12, 0), loader(6, 1))
    doc = json.loads((tmp_path / "codebook_history.json").read_text())  # no logger: root dir
    assert doc["codebook_size"] == K and doc["quantizer"] == "vqtok.quantizers.fsq.FSQ"
    assert [v["step"] for v in doc["validations"]] == [2, 4]  # not the sanity check
    assert [t["step"] for t in doc["train"]] == [1, 2, 4]  # first step, then every 2
    with np.load(tmp_path / "codebook_history.npz", allow_pickle=False) as npz:
        counts = npz["counts"]
    tokens = 6 * (16 // module.model.downsample_factor) ** 2
    assert counts.shape == (2, K) and counts.sum(axis=1).tolist() == [tokens, tokens]
    for row, v in zip(counts, doc["validations"]):
        assert v["usage"] == (row > 0).mean() and v["dead_codes"] == int((row == 0).sum())
        p = row[row > 0] / row.sum()
        assert v["perplexity"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-12)
        assert v["total_ids"] == tokens and isinstance(v["psnr"], float)
    # The per-batch curve: one batch of 4 images cannot show more than its ids.
    for t in doc["train"]:
        assert t["batch_ids"] == 4 * tokens // 6 and t["batch_usage"] <= t["batch_ids"] / K


def test_validation_counts_are_summed_over_ranks(tmp_path: Path) -> None:
    """Fake a 3-rank world whose other ranks hold 1x and 2x the local counts."""
    torch.manual_seed(0)
    module = tiny_module()
    usage = module.val_usage
    usage.distributed_available_fn = lambda: True
    usage.dist_sync_fn = lambda tensor, group=None: [tensor, tensor, 2 * tensor]
    val = loader(6, 1)
    quiet_trainer(tmp_path).validate(module, val, verbose=False)
    module.eval()
    with torch.no_grad():
        ids = torch.cat([module.model.encode(x).indices.reshape(-1) for x, _ in val])
    local = torch.bincount(ids, minlength=K)
    torch.testing.assert_close(module.validation_counts, 4 * local, rtol=0, atol=0)


def stub_trainer(tmp_path: Path, rank_zero: bool, step: int = 10) -> SimpleNamespace:
    return SimpleNamespace(log_dir=str(tmp_path), default_root_dir=str(tmp_path),
                           is_global_zero=rank_zero, global_step=step, current_epoch=0,
                           sanity_checking=False, callback_metrics={"val/psnr": torch.tensor(12.5)})


def stub_module(counts: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(quantizer=FSQ([4, 4, 4]), validation_counts=counts)


TRAIN_OUTPUTS = {"loss": torch.tensor(1.0), "indices": torch.tensor([[0, 1], [1, 1]])}


def test_only_rank_zero_writes(tmp_path: Path) -> None:
    counts = torch.zeros(K, dtype=torch.int64)
    counts[:3] = torch.tensor([5, 1, 2])
    for rank_zero, folder in ((False, tmp_path / "rank1"), (True, tmp_path / "rank0")):
        cb = CodebookHistory(every_n_steps=3)
        trainer, module = stub_trainer(folder, rank_zero), stub_module(counts)
        cb.setup(trainer, module, "fit")
        cb.on_train_batch_end(trainer, module, TRAIN_OUTPUTS, None, 0)
        cb.on_validation_end(trainer, module)
        cb.on_train_end(trainer, module)
        written = sorted(p.name for p in folder.glob("*")) if folder.exists() else []
        if rank_zero:
            assert written == ["codebook_history.json", "codebook_history.npz"]
            doc = json.loads((folder / "codebook_history.json").read_text())
            assert doc["validations"][0]["usage"] == 3 / K
            assert doc["validations"][0]["psnr"] == 12.5 and doc["validations"][0]["ssim"] is None
            assert doc["train"] == [{"step": 10, "epoch": 0, "batch_usage": 2 / K,
                                     "batch_perplexity": pytest.approx(np.exp(
                                         -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)))),
                                     "batch_ids": 4}]
        else:
            assert written == []


def test_state_survives_a_checkpoint_round_trip(tmp_path: Path) -> None:
    counts = torch.arange(K, dtype=torch.int64)
    cb = CodebookHistory()
    trainer, module = stub_trainer(tmp_path / "a", True), stub_module(counts)
    cb.setup(trainer, module, "fit")
    cb.on_validation_end(trainer, module)
    torch.save(cb.state_dict(), tmp_path / "state.pt")
    restored = CodebookHistory()
    restored.setup(stub_trainer(tmp_path / "b", True), module, "fit")
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    restored.write(stub_trainer(tmp_path / "b", True))
    for name in ("codebook_history.json", "codebook_history.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    wrong = CodebookHistory()
    wrong.setup(stub_trainer(tmp_path / "c", True),
                SimpleNamespace(quantizer=FSQ([2, 2, 2]), validation_counts=None),
                "fit")
    with pytest.raises(ValueError, match="holds counts for 64 codes but the module's "
                                         "quantizer has 8"):
        wrong.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))


def test_bad_arguments_and_modules(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every_n_steps must be a positive int, got 0"):
        CodebookHistory(every_n_steps=0)
    cb = CodebookHistory()
    with pytest.raises(ValueError, match="needs a LightningModule with a vqtok `quantizer`"):
        cb.setup(stub_trainer(tmp_path, True), SimpleNamespace(), "fit")
    cb.setup(stub_trainer(tmp_path, True), stub_module(torch.zeros(K)), "fit")
    with pytest.raises(ValueError, match=r"`validation_counts` of shape \(64,\)"):
        cb.on_validation_end(stub_trainer(tmp_path, True), stub_module(torch.zeros(3)))


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = atomic_write_bytes(tmp_path / "f.json", b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def cli_config(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f"{i}.png")
    config = tmp_path / "config.yaml"
    config.write_text(f"""
trainer:
  default_root_dir: {tmp_path / "runs"}
  fast_dev_run: true
  enable_progress_bar: false
  enable_model_summary: false
model:
  encoder: {{class_path: vqtok.models.Encoder, init_args: {{in_channels: 3, channels: 8,
            channel_mult: [1, 2], num_res_blocks: 1, dim: 8}}}}
  quantizer: {{class_path: vqtok.quantizers.FSQ, init_args: {{levels: [4, 4, 4], dim: 8}}}}
  decoder: {{class_path: vqtok.models.Decoder, init_args: {{out_channels: 3, channels: 8,
            channel_mult: [1, 2], num_res_blocks: 1, dim: 8}}}}
data:
  class_path: vqtok.training.data.ImageFolderDataModule
  init_args: {{root: {images}, size: 16, batch_size: 2, val_fraction: 0.34}}
""")
    return config


def test_cli_records_history_by_default_and_can_turn_it_off(tmp_path: Path) -> None:
    config = cli_config(tmp_path)
    cli = run_tokenizer_cli(["fit", "--config", str(config)])
    (history,) = [c for c in cli.trainer.callbacks if isinstance(c, CodebookHistory)]
    assert history.every_n_steps == 50
    doc = json.loads((tmp_path / "runs" / "codebook_history.json").read_text())
    # 2 of 6 images held out, (16 / 2)^2 tokens each (channel_mult [1, 2]: factor 2)
    assert len(doc["validations"]) == 1 and doc["validations"][0]["total_ids"] == 2 * 64
    assert (tmp_path / "runs" / "tokenizer" / "config.json").is_file()

    off = run_tokenizer_cli(["validate", "--config", str(config), "--codebook_history", "null",
                         "--trainer.default_root_dir", str(tmp_path / "off")])
    assert not any(isinstance(c, CodebookHistory) or c is None for c in off.trainer.callbacks)
    assert not (tmp_path / "off" / "codebook_history.json").exists()
