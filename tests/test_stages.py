"""Multi-stage quantizers (residual VQ) through the whole library: usage per stage, the
codebook history, the report, ImageTokenizer and the tokens file."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import tiny_model
from tests.report.synthetic import stats_by_hand
from vqtok.apps.files import decode_file, encode_files
from vqtok.cli import main
from vqtok.formats.tokens import read_tokens
from vqtok.metrics import CodebookUsage
from vqtok.models import Decoder, Encoder
from vqtok.quantizers import FSQ, ResidualQuantizer, VectorQuantizer
from vqtok.tokenizers import ImageTokenizer
from vqtok.training.callbacks import CodebookHistory
from vqtok.training.module import TokenizerModule

K, S = 16, 3


def test_usage_counts_each_stage_apart() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, K, size=(4, 5, 6, S))  # (B, h, w, S)
    ids[..., 2] = 7  # the last stage uses one code only
    metric = CodebookUsage(K, num_stages=S)
    metric.update(torch.from_numpy(ids))
    metric.update(torch.from_numpy(ids[..., :2]))  # a step under quantize dropout: 2 stages
    per_stage = [np.bincount(ids[..., s].ravel(), minlength=K) * (2 if s < 2 else 1)
                 for s in range(S)]
    np.testing.assert_array_equal(metric.counts.numpy(), np.concatenate(per_stage))
    for s, stats in enumerate(metric.stage_stats()):
        by_hand = stats_by_hand(per_stage[s])
        assert float(stats["usage"]) == by_hand["usage"]
        assert float(stats["perplexity"]) == pytest.approx(by_hand["perplexity"], rel=1e-12)
    pooled = metric.compute()["usage"]
    assert float(pooled) == pytest.approx(np.mean([(c > 0).mean() for c in per_stage]))
    with pytest.raises(ValueError, match="trailing stage axis of at most 3"):
        metric.update(torch.zeros(2, 4, dtype=torch.long))


def residual_model(seed: int = 0):
    stages = [FSQ(levels=[4, 4], dim=4) for _ in range(S)]  # 16 codes each
    return tiny_model(ResidualQuantizer(stages), seed=seed).eval()


def test_tokenizer_gives_and_takes_a_stage_axis(tmp_path: Path) -> None:
    tokenizer = ImageTokenizer(residual_model())
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 20, 3), dtype=np.uint8)
    ids = tokenizer.encode(images)
    assert ids.shape == (3, 4, 5, S) and tokenizer.num_stages == S
    with torch.no_grad():
        expected = tokenizer.model.decode_indices(ids)  # the model's own decoding
    # (equal up to the low bits the tokenizer's batch-independent conv kernels change)
    np.testing.assert_allclose(tokenizer.decode_to_tensor(ids).numpy(), expected.numpy(),
                               atol=1e-5)
    coarse = tokenizer.decode_to_tensor(ids[..., :1])  # the first stage alone
    assert coarse.shape == expected.shape and not torch.equal(coarse, expected)
    with pytest.raises(ValueError, match=r"s <= 3 stages"):
        tokenizer.decode(ids[..., 0])  # a grid without its stage axis
    # batch independence holds for the stage axis too
    assert torch.equal(tokenizer.encode(images[1:2])[0], ids[1])
    # the tokens file keeps the stages; decode writes the same images
    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    encode_files([folder], tokenizer, tmp_path / "t.npz", progress=False)
    tokens = read_tokens(tmp_path / "t.npz")
    assert tokens.num_stages == S and tokens.ids[0].shape == (4, 5, S)
    assert torch.equal(torch.from_numpy(tokens.ids[2]), ids[2])
    written = decode_file(tmp_path / "t.npz", tokenizer, tmp_path / "out")
    assert [Image.open(p).size for p in written] == [(20, 16)] * 3


def test_history_and_report_of_a_residual_run(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    enc = Encoder(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, dim=8)
    dec = Decoder(out_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, dim=8)
    quantizer = ResidualQuantizer([VectorQuantizer(K, 8) for _ in range(S)])
    module = TokenizerModule(enc, quantizer, dec)
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    val = DataLoader(TensorDataset(x[:6], torch.zeros(6, dtype=torch.long)), batch_size=3)
    trainer = pl.Trainer(max_steps=2, val_check_interval=2, check_val_every_n_epoch=None,
                         logger=CSVLogger(tmp_path, name="res"),
                         callbacks=[CodebookHistory(every_n_steps=1)],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(module, DataLoader(TensorDataset(x, torch.zeros(8, dtype=torch.long)),
                                   batch_size=4), val)
    for s in range(S):
        assert f"val/usage/stage{s}" in trainer.callback_metrics
    run_dir = Path(trainer.log_dir)
    module.export(run_dir / "tokenizer")
    doc = json.loads((run_dir / "codebook_history.json").read_text())
    with np.load(run_dir / "codebook_history.npz") as npz:
        counts = npz["counts"]
    assert doc["num_stages"] == S and doc["codebook_size"] == K and counts.shape == (1, S * K)
    with torch.no_grad():
        ids = torch.cat([module.model.eval().encode(batch).indices for batch, _ in val])
    recount = np.concatenate([np.bincount(ids[..., s].reshape(-1).numpy(), minlength=K)
                              for s in range(S)])
    np.testing.assert_array_equal(counts[0], recount)
    out = tmp_path / "report.html"
    assert main(["report", str(run_dir), "--out", str(out), "--samples", "2",
                 "--image-size", "16"]) == 0
    (entry,) = json.loads(out.with_suffix(".json").read_text())["runs"]
    stage_notes = [n for n in entry["notes"] if n.startswith("stage ")]
    assert len(stage_notes) == S
    assert entry["verdict"]["text"].startswith("stage ")
    assert entry["codebook"]["nn_codes_measured"] == S * K  # every stage's codes
