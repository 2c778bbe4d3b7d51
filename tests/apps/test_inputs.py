"""`--overwrite` replaces a command's earlier outputs, never what the command reads: not an
input file, not a file inside a tokenizer or decoder directory, not a folder that holds an
input, whatever symbolic or hard link leads there. Each case runs `vqtok` as a user does,
on copies of the shipped checkpoints in a temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqtok.cli import main
from vqtok.formats.outputs import check_new_output, check_output_folder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the shipped Fashion-MNIST tokenizer and decoder: (tokenizer, decoder)."""
    tok = shutil.copytree(ROOT / "checkpoints" / "fmnist_fsq", tmp_path / "T")
    dec = shutil.copytree(ROOT / "checkpoints" / "decoder_fmnist", tmp_path / "D")
    return Path(tok), Path(dec)


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def grey(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
                    ).save(path)
    return path


def refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``vqtok ARGS``; it must exit 2 with one line on stderr, which is returned."""
    status = main(args)
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_encode_never_writes_into_its_tokenizer(tmp_path: Path, models, capsys) -> None:
    tok, _ = models
    before = contents(tok)
    image = grey(tmp_path / "img.png")
    for out in ("model.safetensors", "config.json", "new.npz"):
        err = refused(["encode", str(image), "--tokenizer", str(tok), "--out", str(tok / out),
                       "--overwrite", "--quiet"], capsys)
        assert str(tok) in err and "input of this command" in err
        assert contents(tok) == before


def test_decode_never_writes_into_its_tokenizer(tmp_path: Path, models, capsys) -> None:
    tok, _ = models
    grey(tmp_path / "config.png")
    npz = tmp_path / "ids.npz"
    assert main(["encode", str(tmp_path / "config.png"), "--tokenizer", str(tok), "--out",
                 str(npz), "--quiet"]) == 0
    before = contents(tok)
    err = refused(["decode", str(npz), "--tokenizer", str(tok), "--out", str(tok),
                   "--overwrite", "--quiet"], capsys)
    assert "input of this command" in err
    assert contents(tok) == before  # no config.png beside config.json


def test_generate_never_writes_over_its_decoder_or_tokenizer(models, capsys) -> None:
    tok, dec = models
    before = contents(tok), contents(dec)
    for out in (tok / "config.json", dec / "model.safetensors", dec / "new.png"):
        err = refused(["generate", "--decoder", str(dec), "--tokenizer", str(tok), "--prompt",
                       "bag", "--out", str(out), "--overwrite"], capsys)
        assert "input of this command" in err and "--overwrite" in err
        assert (contents(tok), contents(dec)) == before


def test_links_to_an_input_are_the_input(tmp_path: Path, models, capsys) -> None:
    tok, _ = models
    before = contents(tok)
    image = grey(tmp_path / "img.png")
    hard = tmp_path / "hard.npz"
    os.link(tok / "model.safetensors", hard)  # the same file under another name
    (tmp_path / "soft").symlink_to(tok, target_is_directory=True)
    for out in (hard, tmp_path / "soft" / "model.safetensors", tmp_path / "soft" / "x.npz"):
        refused(["encode", str(image), "--tokenizer", str(tok), "--out", str(out),
                 "--overwrite", "--quiet"], capsys)
    assert contents(tok) == before and hard.read_bytes() == before["model.safetensors"]
    os.link(image, tmp_path / "image-link.npz")  # the image, hard-linked
    refused(["encode", str(image), "--tokenizer", str(tok), "--out",
             str(tmp_path / "image-link.npz"), "--overwrite", "--quiet"], capsys)
    assert Image.open(image).size == (28, 28)


def test_export_never_replaces_a_folder_holding_its_checkpoint(tmp_path: Path, capsys) -> None:
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    (ckpts / "last.ckpt").write_bytes(b"my only checkpoint")
    err = refused(["export", str(ckpts / "last.ckpt"), str(ckpts), "--overwrite"], capsys)
    assert "holds" in err and "last.ckpt" in err
    err = refused(["export", str(ckpts / "last.ckpt"), str(tmp_path), "--overwrite"], capsys)
    assert "holds" in err
    assert (ckpts / "last.ckpt").read_bytes() == b"my only checkpoint"


def test_report_never_writes_into_a_tokenizer(tmp_path: Path, models, capsys) -> None:
    tok, _ = models
    before = contents(tok)
    (tmp_path / "data").mkdir()
    grey(tmp_path / "data" / "a.png")
    err = refused(["report", "--tokenizer", str(tok), "--data", str(tmp_path / "data"),
                   "--out", str(tok / "r.html"), "--overwrite"], capsys)
    assert "input of this command" in err
    assert contents(tok) == before


def test_an_output_folder_may_hold_inputs_its_files_may_not_be_them(tmp_path: Path) -> None:
    (tmp_path / "tokens.npz").write_bytes(b"ids")
    # decode writes PNGs into a folder that holds the tokens file: allowed
    assert check_output_folder(tmp_path, inputs=[tmp_path / "tokens.npz"]) == tmp_path
    with pytest.raises(ValueError, match="holds .*tokens.npz"):  # replaced as a whole: no
        check_new_output(tmp_path, inputs=[tmp_path / "tokens.npz"], overwrite=True,
                         folder=True)
    with pytest.raises(ValueError, match="is inside"):
        check_output_folder(tmp_path / "sub", inputs=[tmp_path])


# ---- only regular files are read ------------------------------------------------------


def vqtok(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed command in a subprocess, killed after two minutes: a read that blocks (a
    named pipe opened for reading) fails the test instead of hanging the suite."""
    exe = Path(sys.executable).with_name("vqtok")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=120)


def test_encode_skips_named_pipes_in_a_folder_and_refuses_one_by_name(tmp_path: Path) -> None:
    tok = ROOT / "checkpoints" / "fmnist_fsq"  # read only
    folder = tmp_path / "in"
    folder.mkdir()
    grey(folder / "a.png")
    os.mkfifo(folder / "b.png")
    os.mkfifo(tmp_path / "elsewhere")
    (folder / "c.png").symlink_to(tmp_path / "elsewhere")  # a link to a named pipe
    done = vqtok(["encode", "in", "--tokenizer", str(tok), "--out", "t.npz", "--quiet"],
                 tmp_path)
    assert done.returncode == 1, done.stderr  # some files failed, the others are encoded
    assert "encoded 1 images" in done.stdout
    for name in ("b.png", "c.png"):
        assert f"in/{name}: a named pipe (FIFO), not a regular file" in done.stdout
    with np.load(tmp_path / "t.npz") as npz:
        assert [str(n) for n in npz["names"]] == ["a.png"]

    done = vqtok(["encode", "in/b.png", "--tokenizer", str(tok), "--out", "u.npz"], tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "in/b.png: a named pipe (FIFO), not a regular file or a folder" in line
    assert not (tmp_path / "u.npz").exists()


def test_an_image_folder_skips_named_pipes(tmp_path: Path) -> None:
    grey(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")
    code = ("import sys; from vqtok.data import ImageFolder; "
            "d = ImageFolder(sys.argv[1], size=16); print(len(d), d.skipped)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 [PosixPath(") and "b.png" in done.stdout
