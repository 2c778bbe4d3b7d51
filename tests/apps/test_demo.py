"""`make demo`'s job end to end, with a two-step schedule, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from PIL import Image

from vqtok import ImageTokenizer
from vqtok.apps.demo import max_time
from vqtok.cli import main


def test_max_time_format() -> None:
    assert max_time(4) == "00:00:04:00"
    assert max_time(0.5) == "00:00:00:30"
    assert max_time(90) == "00:01:30:00"


def test_demo_runs_from_any_directory_and_prints_each_line_once(tmp_path: Path) -> None:
    # The installed command, from a folder that is not the checkout: the config and the
    # photos come with the package.
    vqtok = Path(sys.executable).with_name("vqtok")
    done = subprocess.run([str(vqtok), "demo", "--max-steps", "2"], cwd=tmp_path,
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "token grid            (107, 160) = 17120 tokens" in out  # 640 x 427 at 4x
    for line in ("round-trip PSNR", "colourfulness", "codebook usage (val)",
                 "training              2 steps"):
        assert line in out
    run = tmp_path / "runs" / "demo" / "version_0"
    assert (run / "demo_roundtrip.png").is_file()
    assert ImageTokenizer.from_pretrained(run / "tokenizer").codebook_size == 1000
    # Each message once (no second copy through the root logger), no third-party tips,
    # no warnings a user cannot act on.
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines()
             if line.strip() and "━" not in line]  # progress-bar frames may repeat
    repeated = [line for line, n in Counter(lines).items() if n > 1]
    assert repeated == []
    messages = [line.split(": ", 1)[-1] for line in lines]
    assert len(messages) == len(set(messages)), messages
    for noise in ("Tip:", "LightningCLI's args", "LeafSpec"):
        assert noise not in done.stdout + done.stderr


def test_every_option_is_checked_before_training(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("L", (2000, 1100)).save(tmp_path / "big.png")  # 2.2 million pixels
    cases = [
        (["--photo", "missing.png"], "--photo missing.png: no such file"),
        (["--photo", "notes.png"], "--photo notes.png: cannot read the image"),
        (["--photo", "big.png"], "over the budget of 2,097,152"),
        (["--photo", "."], "--photo .: a folder, not a regular file"),
        (["--config", "none.yaml"], "--config none.yaml: no such file"),
        (["--max-minutes", "nan"], "--max-minutes must be a positive number"),
        (["--max-steps", "0"], "--max-steps must be a positive int"),
    ]
    for args, message in cases:
        assert main(["demo", "--max-steps", "1", "--max-minutes", "0.05", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not (tmp_path / "runs").exists(), args  # no training was started
