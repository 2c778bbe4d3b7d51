"""Reports from synthetic histories with known answers: HTML, PNGs, JSON schema, errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.report.page import check_page
from tests.report.synthetic import collapsed_counts, uniform_counts, write_history
from vqtok.formats.report import validate_report
from vqtok.report import build_report, plots
from vqtok.report.plots import binned_shares

RUN_KEYS = {"name", "path", "source", "quantizer", "quantizer_config", "codebook_size",
            "verdict", "final", "validations", "train", "codebook", "samples", "notes"}
FINAL_KEYS = {"step", "epoch", "usage", "used_codes", "perplexity", "dead_codes",
              "normalized_entropy", "psnr", "ssim", "total_ids"}


def read(json_path: Path) -> dict:
    return json.loads(json_path.read_text())


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("collapsed")
    run_dir = write_history(tmp / "vq" / "version_0", collapsed_counts(k=1000, used=10),
                            steps=[100, 200, 300])
    return build_report([run_dir], tmp / "out" / "report.html")


def test_collapsed_run(collapsed: tuple[Path, Path]) -> None:
    html, js = collapsed
    assert js == html.parent / "report.json"
    doc = read(js)
    validate_report(doc)
    # The documented schema, checked by hand too.
    assert set(doc) == {"format", "format_version", "thresholds", "runs", "comparison"}
    assert doc["format"] == "vqtok.report" and doc["format_version"] == 1
    (run,) = doc["runs"]
    assert set(run) == RUN_KEYS and set(run["final"]) == FINAL_KEYS
    assert run["name"] == "vq/version_0" and run["source"] == "history"
    assert run["final"]["usage"] == 10 / 1000
    assert run["final"]["dead_codes"] == 990 and run["final"]["step"] == 300
    assert run["final"]["perplexity"] == pytest.approx(10.0, rel=1e-12)
    assert run["verdict"]["level"] == "collapsed"
    assert run["verdict"]["text"].startswith("collapsed: 99% of 1,000 codes never used")
    assert [v["step"] for v in run["validations"]] == [100, 200, 300]
    assert run["codebook"]["tokenizer"] is None
    assert any("no exported tokenizer" in n for n in run["notes"])
    page = html.read_text()
    images = check_page(page)
    assert len(images) == 3  # curves, sorted frequencies, heat map (no tokenizer)
    assert run["verdict"]["text"] in page.replace("&#x27;", "'")
    assert doc["comparison"] == {"runs": 1, "same_codebook_size": True, "notes": []}


def test_uniform_run_has_perplexity_k_and_its_name_is_escaped(tmp_path: Path) -> None:
    run_dir = write_history(tmp_path / "<script>alert(1)</script>",
                            uniform_counts(k=256, per_code=7), psnr=None)
    html, js = build_report([run_dir], tmp_path / "r.html")
    final = read(js)["runs"][0]["final"]
    assert final["perplexity"] == pytest.approx(256.0, rel=1e-12)
    assert final["usage"] == 1.0 and final["normalized_entropy"] == pytest.approx(1.0)
    assert final["psnr"] is None and final["ssim"] is None
    assert read(js)["runs"][0]["verdict"]["level"] == "healthy"
    page = html.read_text()
    check_page(page)  # asserts there is no <script> tag
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_comparison_of_runs_with_different_codebook_sizes(tmp_path: Path) -> None:
    a = write_history(tmp_path / "a", collapsed_counts(k=1000, used=10))
    b = write_history(tmp_path / "x" / "a", uniform_counts(k=256))  # the same folder name
    html, js = build_report([a, b], tmp_path / "cmp.html")
    doc = read(js)
    validate_report(doc)
    assert [r["name"] for r in doc["runs"]] == ["a", "a (2)"]
    assert [r["verdict"]["level"] for r in doc["runs"]] == ["collapsed", "healthy"]
    assert doc["comparison"]["runs"] == 2 and doc["comparison"]["same_codebook_size"] is False
    assert "a: 1,000, a (2): 256" in doc["comparison"]["notes"][0]
    page = html.read_text()
    images = check_page(page)
    assert len(images) == 2 + 2 * 3  # overlays + three figures per run (no tokenizers)
    assert "<h2>Comparison</h2>" in page
    with pytest.raises(ValueError, match=r"different codebook sizes \(a: 1,000, a \(2\): 256"):
        build_report([a, b], tmp_path / "strict.html", same_codebook=True)
    assert not (tmp_path / "strict.html").exists()


def test_schema_validator_rejects_bad_documents(collapsed: tuple[Path, Path]) -> None:
    good = read(collapsed[1])
    validate_report(good)
    bad = json.loads(json.dumps(good))
    del bad["runs"][0]["final"]["usage"]
    with pytest.raises(ValueError, match=r"report: missing keys \['usage'\] in runs\[0\]\.final"):
        validate_report(bad)
    bad = json.loads(json.dumps(good))
    bad["runs"][0]["verdict"]["level"] = "fine"
    with pytest.raises(ValueError, match=r"runs\[0\]\.verdict\.level"):
        validate_report(bad)
    bad = json.loads(json.dumps(good))
    bad["runs"][0]["codebook_size"] = "8"
    with pytest.raises(ValueError, match=r"runs\[0\]\.codebook_size must be an integer >= 1, got '8'"):
        validate_report(bad)
    bad = json.loads(json.dumps(good))
    bad["format_version"] = 2
    with pytest.raises(ValueError, match="format_version"):
        validate_report(bad)


def test_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "no_history").mkdir()
    with pytest.raises(ValueError, match=r"no_history: no codebook history"):
        build_report([tmp_path / "no_history"], tmp_path / "r.html")
    good = write_history(tmp_path / "good", uniform_counts(k=8))
    with pytest.raises(ValueError, match=r"--out must name an \.html file"):
        build_report([good], tmp_path / "r.json")
    with pytest.raises(ValueError, match="nothing to report"):
        build_report([], tmp_path / "r.html")
    with pytest.raises(ValueError, match="--tokenizer needs --data"):
        build_report([], tmp_path / "r.html", tokenizers=[tmp_path / "tok"])
    with pytest.raises(ValueError, match="samples must be a positive int"):
        build_report([good], tmp_path / "r.html", samples=0)
    (good / "codebook_history.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"good/codebook_history\.npz: not a readable counts file"):
        build_report([good], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_heatmap_rows_are_sorted_by_final_use_and_binned() -> None:
    counts = np.array([[1, 0, 3, 0, 4, 2],
                       [0, 5, 1, 2, 0, 2]])  # final use order: code 1, 3, 5, 2, 0, 4
    share = counts / counts.sum(axis=1, keepdims=True)
    order = [1, 3, 5, 2, 0, 4]
    np.testing.assert_allclose(binned_shares(counts, 10), share.T[order])
    pairs = share.T[order].reshape(3, 2, 2).mean(axis=1)  # 6 codes into 3 bins of 2
    np.testing.assert_allclose(binned_shares(counts, 3), pairs)
    png = plots.usage_heatmap(np.tile(counts, (1, 3000)), [10, 20], max_rows=64)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.load() is not None
