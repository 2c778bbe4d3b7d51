"""The README runs as written: its Python examples, and every `vqtok` command of its shell
blocks, in order, in a scratch copy of the repository (so nothing is left in the real one).

The default suite shortens the two training commands (two steps on a few images); the
test marked slow runs every command exactly as the README has it (the 2,000 training steps
of `experiments/fmnist_fsq.yaml` take most of its time). `make demo` and `make test` are what
CI and tests/apps/test_demo.py run."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import FASHION_MNIST, needs_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
SHELL = [shlex.split(line, comments=True) for block in
         re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
         for line in block.replace("\\\n", " ").splitlines() if line.strip()]
COMMANDS = [words for words in SHELL if words[:1] == [".venv/bin/vqtok"]]

# What the default suite adds to a training command so that it takes seconds.
SHORT = {
    ("fit",): ["--trainer.max_steps=2", "--trainer.val_check_interval=2",
               "--trainer.limit_val_batches=2", "--data.init_args.limit_train=8",
               "--data.init_args.val_size=4"],
    ("lm", "fit"): ["--trainer.max_steps=2", "--trainer.val_check_interval=2",
                    "--trainer.limit_val_batches=1", "--data.limit_train=8",
                    "--data.val_size=4"],
}

# A guard against a hung command, not a speed target: the full training run must finish
# even on a machine busy with other jobs.
COMMAND_TIMEOUT_S = 4 * 3600


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2
    assert {words[1] for words in COMMANDS} >= {"data", "fit", "export", "encode", "decode",
                                                "generate", "lm", "report", "eval"}
    assert {words[0] for words in SHELL} == {"make", ".venv/bin/vqtok"}


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})  # noqa: S102 - running the README is the test
    assert os.getcwd() == str(ROOT)


def scratch_copy(tmp: Path) -> Path:
    """The repository's files (tracked, and new ones git does not ignore), with its .venv."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    copy = tmp / "repo"
    for name in filter(None, listed):
        source, target = ROOT / name, copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, target)
    (copy / ".venv").symlink_to(Path(sys.executable).parents[1])
    return copy


def run_commands(tmp: Path, short: bool) -> None:
    repo, cache = scratch_copy(tmp), tmp / "data-cache"
    env = {**os.environ, "VQTOK_DATA": str(cache), "PYTHONUNBUFFERED": "1"}
    status_before = _git_status()
    for words in COMMANDS:
        args = list(words)
        if args[1:3] == ["data", "fashion-mnist"]:
            # No network here: the README's copy form, from the project's data folder.
            args = [*args[:3], "--from", str(FASHION_MNIST), "--quiet"]
        for command, extra in SHORT.items():
            if short and tuple(args[1:1 + len(command)]) == command:
                args += extra
        if args[1:3] == ["lm", "fit"]:
            args.append(f"--data.cache_dir={tmp / 'token-cache'}")
        done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True,
                              check=False, timeout=COMMAND_TIMEOUT_S)
        assert done.returncode == 0, f"{shlex.join(words)}\n{done.stderr[-3000:]}"
    assert (repo / "decoded" / "china.png").is_file() and (repo / "boot_003.png").is_file()
    with Image.open(repo / "bag.gif") as gif:  # `vqtok generate --video --frames 9`
        assert gif.format == "GIF" and gif.n_frames == 9
    assert (repo / "report.html").is_file() and (repo / "measured.json").is_file()
    assert json.loads((repo / "eval.json").read_text())["images"] == 2  # `vqtok eval`
    assert _git_status() == status_before  # nothing written into the real repository


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


@needs_fashion_mnist
def test_readme_commands_run_in_order(tmp_path: Path) -> None:
    run_commands(tmp_path, short=True)


@pytest.mark.slow
@needs_fashion_mnist
def test_readme_commands_run_exactly_as_written(tmp_path: Path) -> None:
    run_commands(tmp_path, short=False)
