"""The `vqtok` command end to end on tiny data: export, encode, decode, and errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from vqtok.cli import main
from vqtok.formats.tokens import read_tokens
from vqtok.models import Decoder, Encoder
from vqtok.quantizers import FSQ
from vqtok.tokenizers import ImageTokenizer
from vqtok.training.module import TokenizerModule


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    enc = Encoder(in_channels=3, channels=8, channel_mult=(1, 2), num_res_blocks=1, dim=6)
    dec = Decoder(out_channels=3, channels=8, channel_mult=(1, 2), num_res_blocks=1, dim=6)
    module = TokenizerModule(enc, FSQ([4, 4, 4], dim=6), dec)
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    data = DataLoader(TensorDataset(x, torch.zeros(8, dtype=torch.long)), batch_size=4)
    trainer = pl.Trainer(
        max_steps=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, default_root_dir=tmp, accelerator="cpu",
    )
    trainer.fit(module, data)
    path = tmp / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def write_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(16, 16), (20, 12), (16, 24)]):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_export_encode_decode_round_trip(checkpoint: Path, tmp_path: Path) -> None:
    tok_dir = tmp_path / "tok"
    assert main(["export", str(checkpoint), str(tok_dir)]) == 0
    assert (tok_dir / "config.json").is_file() and (tok_dir / "model.safetensors").is_file()

    images = write_images(tmp_path / "images")
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    npz = tmp_path / "tokens.npz"
    status = main(["encode", str(tmp_path / "images"), "--tokenizer", str(tok_dir),
                   "--out", str(npz), "--quiet"])
    assert status == 1  # partial failure is signalled, the other files are kept
    assert npz.is_file()

    out_dir = tmp_path / "decoded"
    assert main(["decode", str(npz), "--tokenizer", str(tok_dir), "--out", str(out_dir)]) == 0
    decoded = sorted(out_dir.glob("*.png"))
    assert len(decoded) == len(images)  # the broken file is reported, the others survive
    tok = ImageTokenizer.from_pretrained(tok_dir)
    for src in images:
        match = [d for d in decoded if d.stem.startswith(src.stem)]
        assert len(match) == 1
        img = Image.open(src)
        got = Image.open(match[0])
        assert got.size == img.size  # padding cropped back
        ids = tok.encode(img)
        expected = tok.decode(ids, sizes=[(img.height, img.width)])[0]
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_encode_compile_gives_the_ids_of_the_usual_path(tmp_path: Path) -> None:
    """`vqtok encode --compile` with the shipped Fashion-MNIST tokenizer: the ids of every
    file equal those of the eager run."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(70):  # one full fixed batch of 64 and a partial one
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    tok = Path(__file__).resolve().parents[1] / "checkpoints" / "fmnist_fsq"
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        assert main(["encode", str(folder), "--tokenizer", str(tok), "--out",
                     str(tmp_path / f"{name}.npz"), "--quiet", "--workers", "0", *extra]) == 0
    eager, compiled = read_tokens(tmp_path / "eager.npz"), read_tokens(tmp_path / "compiled.npz")
    assert list(compiled.names) == list(eager.names) and len(eager.ids) == 70
    for a, b in zip(eager.ids, compiled.ids):
        np.testing.assert_array_equal(a, b)


def count_config_reads(monkeypatch: pytest.MonkeyPatch, tokenizer: Path) -> list[Path]:
    """The reads of ``tokenizer``'s config.json from now on (every model directory's JSON
    goes through :func:`vqtok.formats.model_dir.read_json`)."""
    from vqtok.formats import model_dir

    reads: list[Path] = []
    real = model_dir.read_json

    def read_json(path, *args, **kwargs):
        if Path(path) == tokenizer / "config.json":
            reads.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(model_dir, "read_json", read_json)
    return reads


def test_encode_reads_the_tokenizer_config_once(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(6)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    tok = Path(__file__).resolve().parents[1] / "checkpoints" / "fmnist_fsq"
    reads = count_config_reads(monkeypatch, tok)
    assert main(["encode", str(folder), "--tokenizer", str(tok), "--out",
                 str(tmp_path / "ids.npz"), "--quiet", "--workers", "0"]) == 0
    assert len(reads) == 1


def test_export_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "garbage.ckpt"
    bad.write_bytes(b"garbage")
    assert main(["export", str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "garbage.ckpt" in err
    assert not (tmp_path / "out").exists()


def test_export_replaces_an_existing_tokenizer_only_when_asked(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tok_dir = tmp_path / "tok"
    assert main(["export", str(checkpoint), str(tok_dir)]) == 0
    first = load_file(tok_dir / "model.safetensors")
    before = {p.name: p.stat().st_mtime_ns for p in tok_dir.iterdir()}
    assert main(["export", str(checkpoint), str(tok_dir)]) == 2
    assert "tok exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in tok_dir.iterdir()} == before
    assert main(["export", str(checkpoint), str(tok_dir), "--overwrite"]) == 0
    second = load_file(tok_dir / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temp dirs left


def test_export_onnx_reads_a_checkpoint_as_export_would(
        checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--onnx`` from a .ckpt exports the tokenizer that plain ``export`` writes (the graphs
    themselves are checked against PyTorch in tests/test_onnx.py; here the export is
    recorded, not run, to keep the suite fast)."""
    pytest.importorskip("onnxscript", reason="needs the onnx extra: pip install vqtok[onnx]")
    import vqtok.onnx_export

    given = []
    monkeypatch.setattr(vqtok.onnx_export, "export_onnx", lambda tokenizer, out, overwrite: (
        given.append(tokenizer) or (Path(out) / "encoder.onnx", Path(out) / "decoder.onnx")))
    assert main(["export", "--onnx", str(checkpoint), str(tmp_path / "onnx")]) == 0
    assert main(["export", str(checkpoint), str(tmp_path / "tok")]) == 0
    exported = ImageTokenizer.from_pretrained(tmp_path / "tok")
    (tokenizer,) = given
    assert tokenizer.normalization == exported.normalization
    assert tokenizer.min_size == exported.min_size
    state = exported.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in tokenizer.model.state_dict().items())
    capsys.readouterr()
    # a tokenizer directory is already exported: without --onnx there is nothing to do
    assert main(["export", str(tmp_path / "tok"), str(tmp_path / "again")]) == 2
    assert "is a folder; `vqtok export` turns a training checkpoint" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    exe = shutil.which("vqtok", path=str(Path(sys.executable).parent))
    assert exe is not None
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for sub in ("fit", "decoder", "generate", "encode", "decode", "export", "report"):
        assert sub in out
