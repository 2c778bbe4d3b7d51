"""A real tiny training run -> history -> report, through the API and `vqtok report`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from tests.report.page import check_page
from tests.report.synthetic import stats_by_hand, uniform_counts, write_history
from vqtok.cli import main
from vqtok.formats.report import validate_report
from vqtok.models import Decoder, Encoder
from vqtok.quantizers import VectorQuantizer
from vqtok.tokenizers import ImageTokenizer
from vqtok.training.callbacks import CodebookHistory
from vqtok.training.module import TokenizerModule

K = 64


def loader(n: int, seed: int) -> DataLoader:
    x = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=4)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("e2e")
    pl.seed_everything(0, verbose=False)
    enc = Encoder(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, dim=8)
    dec = Decoder(out_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, dim=8)
    module = TokenizerModule(enc, VectorQuantizer(K, 8), dec)
    trainer = pl.Trainer(
        max_steps=4, val_check_interval=2, check_val_every_n_epoch=None,
        logger=CSVLogger(tmp, name="tiny"), callbacks=[CodebookHistory(every_n_steps=1)],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", num_sanity_val_steps=1,
    )
    val = loader(6, seed=1)
    trainer.fit(module, loader(8, seed=0), val)
    run_dir = Path(trainer.log_dir)
    module.export(run_dir / "tokenizer")
    images = tmp / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(
            images / f"{i}.png")
    return {"dir": run_dir, "val": val, "images": images, "tmp": tmp,
            "tokens": (16 // module.model.downsample_factor) ** 2}


def test_history_matches_an_independent_recount(run: dict) -> None:
    doc = json.loads((run["dir"] / "codebook_history.json").read_text())
    with np.load(run["dir"] / "codebook_history.npz", allow_pickle=False) as npz:
        counts, steps = npz["counts"], npz["steps"]
    assert [v["step"] for v in doc["validations"]] == [2, 4]  # the sanity check is not recorded
    assert steps.tolist() == [2, 4] and counts.shape == (2, K) and counts.dtype == np.int64
    assert counts.sum(axis=1).tolist() == [6 * run["tokens"]] * 2
    # The exported tokenizer is the model of the last validation: recount its ids.
    model = ImageTokenizer.from_pretrained(run["dir"] / "tokenizer").model
    with torch.no_grad():
        ids = torch.cat([model.encode(x).indices.reshape(-1) for x, _ in run["val"]])
    np.testing.assert_array_equal(counts[-1], np.bincount(ids.numpy(), minlength=K))
    by_hand = stats_by_hand(counts[-1])
    last = doc["validations"][-1]
    assert last["usage"] == by_hand["usage"] and last["dead_codes"] == by_hand["dead_codes"]
    assert last["perplexity"] == pytest.approx(by_hand["perplexity"], rel=1e-12)
    assert last["psnr"] is not None and last["ssim"] is not None
    assert [t["step"] for t in doc["train"]] == [1, 2, 3, 4]
    assert all(t["batch_ids"] == 4 * run["tokens"] for t in doc["train"])
    assert all(t["batch_usage"] <= t["batch_ids"] / K for t in doc["train"])
    assert not list(run["dir"].glob(".*tmp*"))  # no temporary files left behind


def test_report_of_a_real_run_through_the_cli(run: dict, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    status = main(["report", str(run["dir"]), "--out", str(out), "--samples", "3",
                   "--image-size", "16"])
    assert status == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    validate_report(doc)
    (entry,) = doc["runs"]
    with np.load(run["dir"] / "codebook_history.npz") as npz:
        final = npz["counts"][-1]
    assert entry["final"]["used_codes"] == int((final > 0).sum())
    assert entry["codebook"]["tokenizer"] == str(run["dir"] / "tokenizer")
    assert entry["codebook"]["nn_codes_measured"] == K
    assert isinstance(entry["codebook"]["duplicate_codes"], int)
    assert entry["samples"]["count"] == 3
    images = check_page(out.read_text())
    assert len(images) == 6  # curves, frequencies, heat map, PCA, distances, samples
    (grid,) = [img for alt, img in images if alt.startswith("held-out images")]
    assert grid.mode == "L"  # a grey model is shown grey images


def test_tokenizer_measured_on_data(run: dict, tmp_path: Path) -> None:
    tok_dir = run["dir"] / "tokenizer"
    out = tmp_path / "measured.html"
    assert main(["report", "--tokenizer", str(tok_dir), "--data", str(run["images"]),
                 "--out", str(out), "--image-size", "16", "--samples", "2"]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    validate_report(doc)
    (entry,) = doc["runs"]
    assert entry["source"] == "measured" and entry["name"].endswith(" on images")
    assert entry["final"]["step"] is None and entry["train"] == []
    tokenizer = ImageTokenizer.from_pretrained(tok_dir)
    pictures = [Image.open(p) for p in sorted(run["images"].glob("*.png"))]
    ids = tokenizer.encode(pictures).reshape(-1).numpy()
    by_hand = stats_by_hand(np.bincount(ids, minlength=K))
    assert entry["final"]["total_ids"] == 5 * run["tokens"]
    assert entry["final"]["dead_codes"] == by_hand["dead_codes"]
    assert entry["final"]["perplexity"] == pytest.approx(by_hand["perplexity"], rel=1e-9)
    assert entry["final"]["psnr"] is not None
    check_page(out.read_text())

    # A DataModule config: measured on its validation split.
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "class_path": "vqtok.training.data.ImageFolderDataModule",
        "init_args": {"root": str(run["images"]), "size": 16, "val_fraction": 0.4}}}))
    assert main(["report", "--tokenizer", str(tok_dir), "--data", str(config),
                 "--out", str(out), "--samples", "2", "--overwrite"]) == 0
    (entry,) = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert entry["final"]["total_ids"] == 2 * run["tokens"]  # 2 of the 5 images held out
    assert entry["samples"] == {"source": str(config), "count": 2}


def test_bad_inputs_through_the_cli(run: dict, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fresh_run").mkdir()
    assert main(["report", str(tmp_path / "fresh_run"), "--out", str(tmp_path / "r.html")]) == 2
    assert "fresh_run: no codebook history" in capsys.readouterr().err

    evil = tmp_path / "evil.yaml"
    evil.write_text("data:\n  class_path: os.system\n  init_args: {command: 'true'}\n")
    assert main(["report", "--tokenizer", str(run["dir"] / "tokenizer"), "--data", str(evil),
                 "--out", str(tmp_path / "r.html")]) == 2
    assert "'os.system' is not one of vqtok's DataModules" in capsys.readouterr().err

    # A history whose codebook size differs from the run's tokenizer.
    other = write_history(tmp_path / "other", uniform_counts(k=10))
    shutil.copytree(run["dir"] / "tokenizer", other / "tokenizer")
    with pytest.raises(ValueError, match=r"tokenizer has 64 codes but the history of .*other "
                                         r"counts 10"):
        from vqtok.report import build_report
        build_report([other], tmp_path / "r.html")

    # An unreadable tokenizer in the run directory.
    broken = tmp_path / "broken"
    shutil.copytree(run["dir"], broken)
    (broken / "tokenizer" / "config.json").write_text("{not json")
    assert main(["report", str(broken), "--out", str(tmp_path / "r.html")]) == 2
    assert "broken/tokenizer/config.json: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_a_run_reconstructs_its_own_validation_data(run: dict, tmp_path: Path) -> None:
    """Without --data a run shows the validation split named by the config.yaml that
    `vqtok fit` saves beside its history; unloadable data falls back to the photos, noted."""
    copy = tmp_path / "run"
    shutil.copytree(run["dir"], copy)
    data = {"class_path": "vqtok.training.data.ImageFolderDataModule",
            "init_args": {"root": str(run["images"]), "size": 16, "val_fraction": 0.4}}
    (copy / "config.yaml").write_text(yaml.safe_dump({"seed_everything": 0, "data": data}))
    out = tmp_path / "own.html"
    assert main(["report", str(copy), "--out", str(out), "--samples", "5"]) == 0
    (entry,) = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert entry["samples"] == {
        "source": f"validation images of the run's training data ({copy / 'config.yaml'})",
        "count": 2,  # the 2 of 5 images in its validation split, not 5 photos
    }
    (grid,) = [img for alt, img in check_page(out.read_text())
               if alt.startswith("held-out images")]
    names = sorted(run["images"].glob("*.png"))
    val_pixels = [np.asarray(Image.open(p)) for p in names]
    scale = grid.height // (2 * 16 + 4)  # the grid is scaled up by a whole factor
    top_left = np.asarray(grid)[: 16 * scale : scale, : 16 * scale : scale]  # 1st original
    assert any(np.array_equal(top_left, px) for px in val_pixels)

    data["init_args"]["root"] = str(tmp_path / "moved")  # the data is not here any more
    (copy / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    assert main(["report", str(copy), "--out", str(out), "--samples", "2", "--overwrite"]) == 0
    (entry,) = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert entry["samples"]["source"].startswith("embedded held-out photos")
    assert any("run's own data could not be loaded" in n and "moved" in n
               for n in entry["notes"])
