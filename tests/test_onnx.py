"""ONNX export (docs/formats.md#onnx): onnxruntime runs both graphs and gives PyTorch's ids
(exactly, wherever an id is not within float rounding of a boundary) and its pixels within PIXEL_TOL, at batch sizes and image sizes other than the
traced example's (so the dynamic axes really are dynamic); and the export's errors.

Each export takes 5-15 s here (torch.export tracing and the ONNX translation), so the
default suite exports two models, a real FSQ tokenizer through the command and a tiny VQ
one; the other quantizers run under ``-m slow``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import assert_ids_agree, tiny_model, undecided_ids
from vqtok.cli import main
from vqtok.extras import MissingExtraError
from vqtok.onnx_export import DECODER_NAME, ENCODER_NAME, export_onnx, require_onnx
from vqtok.quantizers import BSQ, FSQ, LFQ, ResidualQuantizer, SimVQ, VectorQuantizer
from vqtok.tokenizers import ImageTokenizer

ort = pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install vqtok[onnx]")
onnx = pytest.importorskip("onnx", reason="needs the onnx extra: pip install vqtok[onnx]")
pytest.importorskip("onnxscript", reason="needs the onnx extra: pip install vqtok[onnx]")

ROOT = Path(__file__).resolve().parents[1]
FMNIST = ROOT / "checkpoints" / "fmnist_fsq"
PIXEL_TOL = 1e-4
"""Largest |PyTorch - onnxruntime| decoded value, in model space ([-1, 1], so 1/255 of a
pixel is 0.0078). Measured here: at most 4e-6 (float32 convolutions summed in another
order)."""

QUANTIZERS = {
    "vq": lambda: VectorQuantizer(512, 4),
    "simvq": lambda: SimVQ(256, 4),
    "lfq": lambda: LFQ(bits=8, dim=4),
    "bsq": lambda: BSQ(bits=8, dim=4),
    "fsq": lambda: FSQ(levels=[8, 5, 5, 5]),
    "residual": lambda: ResidualQuantizer([VectorQuantizer(64, 4), VectorQuantizer(64, 4)]),
}
SLOW = ("simvq", "lfq", "bsq", "fsq", "residual")


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(tokenizer: ImageTokenizer, folder: Path, cases: list[tuple[int, int, int]],
                 seed: int = 0) -> None:
    """ids equal and pixels within PIXEL_TOL for each ``(batch, height, width)``."""
    encoder, decoder = session(folder / ENCODER_NAME), session(folder / DECODER_NAME)
    rng = np.random.default_rng(seed)
    channels = (tokenizer.channels,) if tokenizer.channels > 1 else ()
    for batch, height, width in cases:
        images = rng.integers(0, 256, (batch, height, width, *channels), dtype=np.uint8)
        ids = tokenizer.encode(list(images))  # the reference: vqtok's own API
        pixels = torch.stack([tokenizer.preprocess(image) for image in images]).numpy()
        (onnx_ids,) = encoder.run(None, {"pixels": pixels})
        assert onnx_ids.dtype == np.int64 and onnx_ids.shape == tuple(ids.shape)
        assert len(np.unique(onnx_ids)) > 1  # a graph that ignored its input would fail
        # exactly equal wherever no value lies within float rounding of a boundary: the
        # two runtimes sum the convolutions in another order (tests.helpers.undecided_ids)
        with torch.no_grad():
            z = tokenizer.model.encoder(torch.from_numpy(pixels))
        assert_ids_agree(torch.from_numpy(onnx_ids), ids,
                         undecided_ids(tokenizer.model.quantizer, z))

        expected = tokenizer.decode_to_tensor(ids).numpy()
        (onnx_pixels,) = decoder.run(None, {"ids": ids.numpy()})
        assert onnx_pixels.shape == expected.shape == (
            batch, tokenizer.channels, height, width)
        assert np.abs(onnx_pixels - expected).max() <= PIXEL_TOL


@pytest.fixture(scope="module")
def fmnist_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """checkpoints/fmnist_fsq exported by the command, as a user would."""
    out = tmp_path_factory.mktemp("onnx") / "fmnist"
    assert main(["export", "--onnx", str(FMNIST), str(out)]) == 0
    return out


def test_the_command_exports_a_tokenizer_directory(fmnist_onnx: Path) -> None:
    assert sorted(p.name for p in fmnist_onnx.iterdir()) == [DECODER_NAME, ENCODER_NAME]
    tokenizer = ImageTokenizer.from_pretrained(FMNIST)
    # f = 4: 28 x 28 is the training size; 36 x 20 and batch 5 were never traced
    check_parity(tokenizer, fmnist_onnx, [(1, 28, 28), (5, 36, 20)])


def test_graphs_record_the_tokenizer_and_leave_batch_and_size_open(fmnist_onnx: Path) -> None:
    tokenizer = ImageTokenizer.from_pretrained(FMNIST)
    for name, (inp, out) in {ENCODER_NAME: ("pixels", "ids"),
                             DECODER_NAME: ("ids", "pixels")}.items():
        model = onnx.load(str(fmnist_onnx / name))
        facts = json.loads({p.key: p.value for p in model.metadata_props}["vqtok.json"])
        assert facts["format"] == "vqtok.onnx"
        assert (facts["downsample_factor"], facts["channels"], facts["codebook_size"]) == (
            4, 1, 1000)
        assert facts["normalization"] == tokenizer.normalization.as_dict()
        assert [i.name for i in model.graph.input] == [inp]
        assert [o.name for o in model.graph.output] == [out]
        dims = model.graph.input[0].type.tensor_type.shape.dim
        # batch and the spatial sides are symbols, not numbers; channels are fixed
        open_axes = [0, 2, 3] if inp == "pixels" else [0, 1, 2]
        assert all(dims[i].dim_param and not dims[i].HasField("dim_value") for i in open_axes)


def test_an_existing_output_is_refused_without_overwrite(
        fmnist_onnx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in fmnist_onnx.iterdir()}
    assert main(["export", "--onnx", str(FMNIST), str(fmnist_onnx)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists; pass --overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in fmnist_onnx.iterdir()} == before


def test_a_folder_of_other_files_is_never_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    tokenizer = ImageTokenizer(tiny_model())
    with pytest.raises(ValueError, match=r"not an ONNX export \['notes.txt'\]"):
        export_onnx(tokenizer, folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("module", ["onnx", "onnxscript"])
def test_without_the_extra_a_one_line_hint(module: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install vqtok\[onnx\]"):
        require_onnx()
    assert main(["export", "--onnx", str(FMNIST), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"vqtok export: error: ONNX export needs the onnx extra: pip install "
                   f"vqtok[onnx] ({module} is missing)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kind", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in QUANTIZERS])
def test_onnx_matches_pytorch(kind: str, tmp_path: Path) -> None:
    tokenizer = ImageTokenizer(tiny_model(QUANTIZERS[kind]()))
    encoder, decoder = export_onnx(tokenizer, tmp_path / kind)
    assert (encoder.parent, decoder.parent) == (tmp_path / kind, tmp_path / kind)
    # f = 4; the traced example was 2 x 16 x 16
    check_parity(tokenizer, tmp_path / kind, [(1, 16, 24), (3, 40, 32)])


def test_an_exporter_failure_is_one_line_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise ValueError("Failed to export the model with torch.export.\nstep 1/3\n...")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(RuntimeError, match=r"^encoder.onnx: the ONNX exporter failed: Failed "
                                           r"to export the model with torch.export. \(--debug"):
        export_onnx(ImageTokenizer(tiny_model()), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary sibling
