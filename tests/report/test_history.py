"""Reading a run's codebook history: round trip and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.report.synthetic import collapsed_counts, write_history
from vqtok.report.history import load_run, run_name


def test_reads_what_was_written(tmp_path: Path) -> None:
    counts = collapsed_counts(k=50, used=5, runs=3)
    run = load_run(write_history(tmp_path / "exp" / "version_3", counts, steps=[10, 20, 30]))
    assert run.name == "exp/version_3"
    assert run.codebook_size == 50
    np.testing.assert_array_equal(run.counts, counts)
    assert run.counts.dtype == np.int64
    assert [v["step"] for v in run.validations] == [10, 20, 30]
    assert run.validations[-1]["dead_codes"] == 45
    assert run.source == "history" and run.tokenizer_dir is None
    assert run_name(tmp_path / "plain") == "plain"


def test_extra_counts_row_from_an_interrupted_write_is_ignored(tmp_path: Path) -> None:
    run_dir = write_history(tmp_path / "r", collapsed_counts(k=20, used=4, runs=2), steps=[1, 2])
    doc = json.loads((run_dir / "codebook_history.json").read_text())
    doc["validations"] = doc["validations"][:1]  # the json lags the npz by one run
    (run_dir / "codebook_history.json").write_text(json.dumps(doc))
    run = load_run(run_dir)
    assert run.counts.shape == (1, 20)


def test_missing_history_names_the_directory(tmp_path: Path) -> None:
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ValueError, match=r"empty_run.*codebook_history\.json is missing"):
        load_run(tmp_path / "empty_run")
    with pytest.raises(ValueError, match="not a run directory"):
        load_run(tmp_path / "nope")


@pytest.mark.parametrize("problem, match", [
    ("json_garbage", r"codebook_history\.json: not valid JSON"),
    ("json_format", (r"codebook_history\.json: format must be 'vqtok\.codebook_history' \(a "
                     r"vqtok codebook history\)")),
    ("json_version", r"codebook_history\.json: unsupported format_version 99"),
    ("json_record", r"codebook_history\.json: missing keys \['perplexity'\] in validations\[0\]"),
    ("json_nan", r"codebook_history\.json: not valid JSON \(non-finite number NaN"),
    ("npz_missing", r"codebook_history\.npz: the counts file .* is missing"),
    ("npz_garbage", r"codebook_history\.npz: not a readable counts file"),
    ("npz_truncated", r"codebook_history\.npz: not a readable counts file"),
    ("npz_pickle", r"codebook_history\.npz: not a readable counts file"),
    ("npz_columns", r"codebook_history\.npz: counts have 7 columns"),
    ("npz_negative", r"codebook_history\.npz: counts must be >= 0"),
    ("npz_float", (r"codebook_history\.npz: counts must be an array of shape \(n, n\) of "
                   r"integers")),
    ("npz_empty_row", r"codebook_history\.npz: rows \[1\] count no code id"),
    ("npz_steps", r"codebook_history\.npz: its 2 rows .* do not match"),
])
def test_corrupt_files_raise_naming_the_file(tmp_path: Path, problem: str, match: str) -> None:
    run_dir = write_history(tmp_path / "run", collapsed_counts(k=20, used=4, runs=2),
                            steps=[5, 10])
    js, npz = run_dir / "codebook_history.json", run_dir / "codebook_history.npz"
    doc = json.loads(js.read_text())
    if problem == "json_garbage":
        js.write_bytes(b"{\"format\": \x00\xff")
    elif problem == "json_format":
        js.write_text(json.dumps({**doc, "format": "something.else"}))
    elif problem == "json_version":
        js.write_text(json.dumps({**doc, "format_version": 99}))
    elif problem == "json_record":
        doc["validations"][0].pop("perplexity")
        js.write_text(json.dumps(doc))
    elif problem == "json_nan":
        doc["validations"][0]["usage"] = float("nan")
        js.write_text(json.dumps(doc))
    elif problem == "npz_missing":
        npz.unlink()
    elif problem == "npz_garbage":
        npz.write_bytes(b"this is not an npz file at all")
    elif problem == "npz_truncated":
        npz.write_bytes(npz.read_bytes()[:60])
    elif problem == "npz_pickle":
        np.savez(npz, counts=np.array([{"a": 1}], dtype=object), steps=np.array([5, 10]))
    elif problem == "npz_columns":
        np.savez(npz, counts=np.ones((2, 7), dtype=np.int64), steps=np.array([5, 10]))
    elif problem == "npz_negative":
        np.savez(npz, counts=-np.ones((2, 20), dtype=np.int64), steps=np.array([5, 10]))
    elif problem == "npz_float":
        np.savez(npz, counts=np.ones((2, 20)), steps=np.array([5, 10]))
    elif problem == "npz_empty_row":
        np.savez(npz, counts=np.array([[1] * 20, [0] * 20]), steps=np.array([5, 10]))
    elif problem == "npz_steps":
        np.savez(npz, counts=np.ones((2, 20), dtype=np.int64), steps=np.array([5, 11]))
    with pytest.raises(ValueError, match=match):
        load_run(run_dir)
