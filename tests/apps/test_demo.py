"""`make demo`'s job end to end, with a two-step schedule, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from vqtok import ImageTokenizer
from vqtok.apps.demo import max_time


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
    for line in ("round-trip PSNR", "codebook usage (val)", "training              2 steps"):
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
