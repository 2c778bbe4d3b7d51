"""`make demo`'s job end to end, with a two-step schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from vqtok import ImageTokenizer
from vqtok.demo import main, max_time

ROOT = Path(__file__).resolve().parents[1]


def test_max_time_format() -> None:
    assert max_time(4) == "00:00:04:00"
    assert max_time(0.5) == "00:00:00:30"
    assert max_time(90) == "00:01:30:00"


def test_demo_trains_exports_and_round_trips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # runs/ is written under the working directory
    config = ROOT / "experiments" / "photos_fsq.yaml"
    assert main(["--config", str(config), "--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "token grid            (107, 160) = 17120 tokens" in out  # 640 x 427 at 4x
    for line in ("round-trip PSNR", "codebook usage (val)", "training              2 steps"):
        assert line in out
    run = tmp_path / "runs" / "demo" / "version_0"
    assert (run / "demo_roundtrip.png").is_file()
    assert ImageTokenizer.from_pretrained(run / "tokenizer").codebook_size == 1000
