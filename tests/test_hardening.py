"""Nothing lost, nothing overwritten, nothing wrong accepted. Each test builds the situation
that used to go wrong (on copies in a temporary folder, never on shipped files) and checks
what happens now, through the `vqtok` command as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.helpers import tiny_model, vqtok_cli
from vqtok.cli import main
from vqtok.formats.atomic import atomic_write_bytes
from vqtok.formats.tokenizer_dir import save_tokenizer_dir
from vqtok.formats.tokens import write_tokens
from vqtok.tokenizers import ImageTokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tokenizer_dir(tiny_model().eval(), tmp_path_factory.mktemp("tok") / "tok")


def photo(path: Path, h: int = 16, w: int = 16, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
                    ).save(path)
    return path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``vqtok ARGS`` in this process: (exit status, stderr)."""
    status = main(args)
    return status, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- 1. outputs: never over an input, never over an existing file unless asked ---------


def test_encode_refuses_to_write_over_its_input(tmp_path: Path, tok_dir: Path, capsys) -> None:
    same = photo(tmp_path / "same.png")
    before = same.read_bytes()
    status, err = run(["encode", str(same), "--tokenizer", str(tok_dir), "--out", str(same),
                       "--quiet"], capsys)
    assert status == 2 and "is also an input" in one_line(err)
    assert same.read_bytes() == before  # the photo, not a zip archive
    status, _ = run(["encode", str(same), "--tokenizer", str(tok_dir), "--out", str(same),
                     "--quiet", "--overwrite"], capsys)
    assert status == 2 and same.read_bytes() == before  # not even with --overwrite


def test_outputs_are_replaced_only_when_asked(tmp_path: Path, tok_dir: Path, capsys) -> None:
    photo(tmp_path / "in" / "a.png")
    npz, out = tmp_path / "t.npz", tmp_path / "out"
    encode = ["encode", str(tmp_path / "in"), "--tokenizer", str(tok_dir), "--out", str(npz),
              "--quiet"]
    assert run(encode, capsys)[0] == 0
    status, err = run(encode, capsys)
    assert status == 2 and "t.npz exists; pass --overwrite" in one_line(err)
    assert run([*encode, "--overwrite"], capsys)[0] == 0
    decode = ["decode", str(npz), "--tokenizer", str(tok_dir), "--out", str(out), "--quiet"]
    assert run(decode, capsys)[0] == 0
    png = out / "a.png"
    png.write_bytes(b"my own edit")
    status, err = run(decode, capsys)
    assert status == 2 and "a.png exists; pass --overwrite" in one_line(err)
    assert png.read_bytes() == b"my own edit"
    assert run([*decode, "--overwrite"], capsys)[0] == 0
    assert Image.open(png).size == (16, 16)
    # encode --out an existing folder fails before encoding anything, in one line
    status, err = run(["encode", str(tmp_path / "in"), "--tokenizer", str(tok_dir),
                       "--out", str(out), "--quiet", "--overwrite"], capsys)
    assert status == 2 and "is a folder" in one_line(err)


def test_report_refuses_to_replace_a_page(tmp_path: Path, tok_dir: Path, capsys) -> None:
    photo(tmp_path / "data" / "a.png", 32, 32)
    page = tmp_path / "r.html"
    page.write_text("a page of mine")
    args = ["report", "--tokenizer", str(tok_dir), "--data", str(tmp_path / "data"), "--out",
            str(page), "--samples", "1", "--image-size", "16"]
    status, err = run(args, capsys)
    assert status == 2 and "r.html exists; pass --overwrite" in one_line(err)
    assert page.read_text() == "a page of mine" and not page.with_suffix(".json").exists()
    assert run([*args, "--overwrite"], capsys)[0] == 0
    assert page.read_text().startswith("<!DOCTYPE html>")


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale_file = tmp_path / f".t.npz.tmp-{dead.pid}-deadbeef"
    stale_dir = tmp_path / f".t.npz.tmp-{dead.pid}-0a1b2c"
    stale_file.write_bytes(b"half an archive")
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"half")
    alive = tmp_path / f".t.npz.tmp-{os.getppid()}-cafe0000"  # a running process's
    alive.write_bytes(b"being written")
    other = tmp_path / f".other.npz.tmp-{dead.pid}-deadbeef"  # another target's
    other.write_bytes(b"x")
    atomic_write_bytes(tmp_path / "t.npz", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, other.name, "t.npz"])


# ---- 2. limits: one file never sinks the batch ---------------------------------------


def test_a_huge_image_is_refused_from_its_header_and_the_rest_encoded(
        tmp_path: Path, tok_dir: Path, capsys) -> None:
    folder = tmp_path / "in"
    photo(folder / "a.png")
    photo(folder / "c.png", seed=1)
    # 3000 x 1000 grey pixels, a few KB of PNG: over the default budget of 2,097,152
    Image.new("L", (3000, 1000)).save(folder / "b_big.png")
    assert (folder / "b_big.png").stat().st_size < 20_000
    npz = tmp_path / "t.npz"
    status = main(["encode", str(folder), "--tokenizer", str(tok_dir), "--out", str(npz),
                   "--quiet"])
    assert status == 1  # some failed: the good files' ids are written all the same
    with np.load(npz) as data:
        assert data["names"].tolist() == ["a.png", "c.png"]
        (reason,) = data["failed_reasons"].tolist()
    assert "3000 x 1000 = 3,000,000 pixels, over the budget of 2,097,152" in reason
    # a larger budget takes it
    assert main(["encode", str(folder), "--tokenizer", str(tok_dir), "--out", str(npz),
                 "--quiet", "--overwrite", "--max-pixels", "4000000"]) == 0


def test_an_allocation_failure_costs_only_its_file(tmp_path: Path, tok_dir: Path,
                                                   monkeypatch) -> None:
    from vqtok.apps.files import encode_files

    tokenizer = ImageTokenizer.from_pretrained(tok_dir)
    for i, side in enumerate((16, 24, 32)):
        photo(tmp_path / "in" / f"{i}.png", side, side, seed=i)
    real = tokenizer.encode_each

    def allocate(tensors, batch_size=16):
        if any(t.shape[-1] == 24 for t in tensors):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't "
                               "allocate memory")
        return real(tensors, batch_size)

    monkeypatch.setattr(tokenizer, "encode_each", allocate)
    summary = encode_files([tmp_path / "in"], tokenizer, tmp_path / "t.npz", progress=False)
    assert summary.encoded == 2 and [p for p, _ in summary.failed] == [
        str(tmp_path / "in" / "1.png")]
    assert "can't allocate memory" in summary.failed[0][1]


def test_decode_refuses_a_declared_size_over_the_budget(tmp_path: Path, tok_dir: Path,
                                                        capsys) -> None:
    npz = tmp_path / "huge.npz"
    grid = np.zeros((5000, 5000), dtype=np.int64)  # 20000 x 20000 pixels at factor 4
    write_tokens(npz, names=["huge.png"], paths=["huge.png"], sizes=[(20000, 20000)],
                 grids=[grid], failed=[], codebook_size=1000, downsample_factor=4)
    assert npz.stat().st_size < 300_000  # a small file that asks for 14 GB
    status, err = run(["decode", str(npz), "--tokenizer", str(tok_dir), "--out",
                       str(tmp_path / "out")], capsys)
    assert status == 2
    assert "20000 x 20000 = 400,000,000 pixels, over the budget" in one_line(err)
    assert not (tmp_path / "out").exists()


# ---- 3. paths: names stay inside --out, conflicts refused before any write -------------


@pytest.mark.parametrize(("names", "match"), [
    (["."], "unsafe image name '.'"),
    (["../escape.png"], "unsafe image name '../escape.png'"),
    (["/etc/x.png"], "unsafe image name '/etc/x.png'"),
    (["a\\b.png"], "unsafe image name"),
    (["sub/.hidden.png"], "unsafe image name"),
    (["x.png", "x.png/y.png"], "written both as a file and as the folder"),
])
def test_stored_names_are_checked_before_anything_is_written(
        tmp_path: Path, tok_dir: Path, capsys, names: list[str], match: str) -> None:
    npz = tmp_path / "t.npz"
    grids = [np.zeros((4, 4), dtype=np.int64) for _ in names]
    write_tokens(npz, names=names, paths=names, sizes=[(16, 16)] * len(names), grids=grids,
                 failed=[], codebook_size=1000, downsample_factor=4)
    out = tmp_path / "out"
    status, err = run(["decode", str(npz), "--tokenizer", str(tok_dir), "--out", str(out)],
                      capsys)
    assert status == 2 and match in one_line(err)
    assert not out.exists()  # nothing written, not even the folder


def test_a_symbolic_link_cannot_lead_outputs_out(tmp_path: Path, tok_dir: Path, capsys) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(outside)
    npz = tmp_path / "t.npz"
    write_tokens(npz, names=["sub/a.png"], paths=["a.png"], sizes=[(16, 16)],
                 grids=[np.zeros((4, 4), dtype=np.int64)], failed=[], codebook_size=1000,
                 downsample_factor=4)
    status, err = run(["decode", str(npz), "--tokenizer", str(tok_dir), "--out", str(out)],
                      capsys)
    assert status == 2 and "leads outside" in one_line(err)
    assert list(outside.iterdir()) == []


# ---- 5. every error a user can cause is one line -------------------------------------


@pytest.mark.parametrize(("args", "match"), [
    (["--device", "cuda"], "this torch sees no CUDA device"),
    (["--device", "bogus"], "unknown device 'bogus'"),
])
def test_bad_devices(tmp_path: Path, tok_dir: Path, capsys, args: list[str], match: str) -> None:
    photo(tmp_path / "a.png")
    status, err = run(["encode", str(tmp_path / "a.png"), "--tokenizer", str(tok_dir),
                       "--out", str(tmp_path / "t.npz"), *args], capsys)
    assert status == 2 and match in one_line(err)


def test_generate_refuses_a_nan_temperature(tmp_path: Path, capsys) -> None:
    status, err = run(["generate", "--decoder", str(ROOT / "checkpoints" / "decoder_fmnist"),
                       "--tokenizer", str(ROOT / "checkpoints" / "fmnist_fsq"), "--prompt",
                       "bag", "--out", str(tmp_path / "x.png"), "--temperature", "nan"],
                      capsys)
    assert status == 2 and "a finite temperature" in one_line(err)
    assert not (tmp_path / "x.png").exists()


def test_export_of_bad_checkpoints(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    status, err = run(["export", str(empty), str(tmp_path / "out")], capsys)
    assert status == 2 and "empty.ckpt" in one_line(err)
    spec = {"class_path": "vqtok.quantizers.FSQ", "init_args": {"levels": [3, 3]}}
    odd = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {
        "encoder": spec, "quantizer": spec, "decoder": spec, "surprise": 1}}, odd)
    status, err = run(["export", str(odd), str(tmp_path / "out")], capsys)
    assert status == 2 and "odd.ckpt" in one_line(err) and "surprise" in err
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.ckpt"):
        main(["--debug", "export", str(empty), str(tmp_path / "out")])


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("vqtok ")


def test_random_bytes_are_not_called_pickled_data(tmp_path: Path, tok_dir: Path,
                                                  capsys) -> None:
    npz = tmp_path / "t.npz"
    npz.write_bytes(os.urandom(300))
    status, err = run(["decode", str(npz), "--tokenizer", str(tok_dir), "--out",
                       str(tmp_path / "out")], capsys)
    line = one_line(err)
    assert status == 2 and "not an .npz archive" in line and "pickle" not in line


# ---- 6. interruptions: a killed run says so and can resume --------------------------


def fit_config(tmp_path: Path) -> list[str]:
    """A photo config shrunk to seconds, writing under ``tmp_path``."""
    return ["--config", str(ROOT / "experiments" / "photos_fsq.yaml"),
            "--data.init_args.train_patches=32", "--data.init_args.val_patches=4",
            "--data.init_args.batch_size=2", "--trainer.val_check_interval=1000",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}"]


def test_sigterm_saves_last_ckpt_exits_nonzero_and_the_run_resumes(tmp_path: Path) -> None:
    (tmp_path / "sigterm.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "tests.helpers.SigtermAtStep", "init_args": {"step": 3}}]}}))
    done = vqtok_cli(["fit", *fit_config(tmp_path), "--config", str(tmp_path / "sigterm.yaml"),
                      "--trainer.max_steps=6"], tmp_path)
    assert done.returncode == 143, done.stderr
    assert "stopped by SIGTERM; resume with --ckpt_path" in done.stderr
    run_dir = tmp_path / "photos_fsq" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
    assert not (run_dir / "tokenizer").exists()  # not finished: nothing exported
    resumed = vqtok_cli(["fit", *fit_config(tmp_path), "--trainer.max_steps=6",
                         f"--ckpt_path={last}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = run_dir  # resumed in the run directory that holds the checkpoint
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["version_0"]
    ckpt = torch.load(final / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6
    assert ImageTokenizer.from_pretrained(final / "tokenizer").codebook_size == 1000


def test_fit_refuses_another_runs_folder_and_a_missing_data_root(tmp_path: Path) -> None:
    base = fit_config(tmp_path)
    first = vqtok_cli(["fit", *base, "--trainer.max_steps=2",
                       "--trainer.logger.init_args.version=0"], tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "photos_fsq" / "version_0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # what README's export reads
    tokenizer = (run_dir / "tokenizer" / "model.safetensors").read_bytes()
    again = vqtok_cli(["fit", *base, "--trainer.max_steps=2",
                       "--trainer.logger.init_args.version=0"], tmp_path)
    assert again.returncode == 2
    assert "already holds a run" in again.stderr.strip().splitlines()[-1]
    assert (run_dir / "tokenizer" / "model.safetensors").read_bytes() == tokenizer
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "checkpoints" / "photos_fsq", copy)
    export = vqtok_cli(["fit", *base, "--trainer.max_steps=2", f"--export_dir={copy}"],
                       tmp_path)
    assert export.returncode == 2 and "--export_dir" in export.stderr
    assert (copy / "model.safetensors").read_bytes() == (
        ROOT / "checkpoints" / "photos_fsq" / "model.safetensors").read_bytes()
    runs = sorted((tmp_path / "photos_fsq").iterdir())
    missing = vqtok_cli(["fit", *base, "--data.init_args.root=/nonexistent/photos"], tmp_path)
    assert missing.returncode == 2
    assert "photo folder /nonexistent/photos/train does not exist" in missing.stderr
    assert sorted((tmp_path / "photos_fsq").iterdir()) == runs  # no run folder made


# ---- 7. messages that used to mislead ------------------------------------------------


def test_a_path_with_a_nul_byte_is_named(capsys) -> None:
    with pytest.raises(ValueError, match=r"'bad\\x00name': not a usable path"):
        ImageTokenizer.from_pretrained("bad\0name")


def test_report_help_names_the_json_it_writes(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "report.html -> report.json" in help_text


def test_a_run_that_has_not_validated_is_told_so(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "runs" / "x" / "version_0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed_everything: 0\n")
    status, err = run(["report", str(run_dir), "--out", str(tmp_path / "r.html")], capsys)
    line = one_line(err)
    assert status == 2 and "no codebook history yet" in line and "Train with" not in line
