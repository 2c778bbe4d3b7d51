"""A converted tokenizer works wherever a native one does (docs/interop.md): ``vqtok
encode`` / ``decode`` on a folder, ONNX export with onnxruntime parity, ``vqtok report
--tokenizer``; and, as every GroupNorm / attention model, it refuses tiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.interop.test_diffusers import diffusers_reference, diffusers_vqmodel
from tests.test_onnx import check_parity
from vqtok.cli import main
from vqtok.formats.tokens import read_tokens
from vqtok.tokenizers import ImageTokenizer


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers f8 VQModel with attention, converted by the command."""
    root = tmp_path_factory.mktemp("converted")
    diffusers_vqmodel(4, True, 64, seed=11).save_pretrained(root / "vq")
    assert main(["convert", "--from", "diffusers", str(root / "vq"), str(root / "tok")]) == 0
    return root / "tok"


def test_encode_and_decode_a_folder(converted: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i, size in enumerate([(32, 32), (40, 24), (64, 48)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"{i}.png")
    assert main(["encode", str(tmp_path / "images"), "--tokenizer", str(converted),
                 "--out", str(tmp_path / "ids.npz"), "--quiet"]) == 0
    tokens = read_tokens(tmp_path / "ids.npz")
    tokenizer = ImageTokenizer.from_pretrained(converted)
    for name, ids in zip(tokens.names, tokens.ids, strict=True):
        image = Image.open(tmp_path / "images" / name)
        assert np.array_equal(np.asarray(ids), tokenizer.encode(image)[0].numpy())
    assert main(["decode", str(tmp_path / "ids.npz"), "--tokenizer", str(converted),
                 "--out", str(tmp_path / "decoded"), "--quiet"]) == 0
    assert Image.open(tmp_path / "decoded" / "2.png").size == (48, 64)


@pytest.mark.slow  # about 30 s: torch.export tracing and the ONNX translation
def test_onnx_export_matches(converted: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install vqtok[onnx]")
    assert main(["export", "--onnx", str(converted), str(tmp_path / "onnx")]) == 0
    check_parity(ImageTokenizer.from_pretrained(converted), tmp_path / "onnx",
                 [(1, 32, 32), (2, 48, 64)])


def test_a_diffusers_folder_is_a_tokenizer_everywhere(tmp_path: Path) -> None:
    """``load_tokenizer`` (what ``vqtok encode --tokenizer`` reads) takes the folder as is."""
    reference = diffusers_vqmodel(4, False, 64, seed=12)
    reference.save_pretrained(tmp_path / "vq")
    pixels = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert main(["encode", str(tmp_path / "a.png"), "--tokenizer", str(tmp_path / "vq"),
                 "--out", str(tmp_path / "ids.npz"), "--quiet"]) == 0
    x = (torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5  # [-1, 1]
    want, _ = diffusers_reference(reference, x)
    assert np.array_equal(read_tokens(tmp_path / "ids.npz").ids[0], want[0].numpy())


def test_tiles_are_refused(converted: Path) -> None:
    with pytest.raises(ValueError, match="cannot run on tiles: it has GroupNorm layers"):
        ImageTokenizer.from_pretrained(converted, tile_size=32)
    assert ImageTokenizer.from_pretrained(converted).tile_size is None


def test_report_measures_it(converted: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"{i}.png")
    assert main(["report", "--tokenizer", str(converted), "--data", str(tmp_path / "images"),
                 "--out", str(tmp_path / "report.html"), "--image-size", "32"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["runs"][0]["codebook_size"] == 64


def test_fastest_kernels_give_the_same_ids(converted: Path) -> None:
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    eager = ImageTokenizer.from_pretrained(converted).encode(x)
    assert torch.equal(ImageTokenizer.from_pretrained(converted, batch_invariant=False).encode(x),
                       eager)
