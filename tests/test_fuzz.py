"""Property: whatever the bytes on disk, reading an image, loading a tokenizer or a decoder,
and `vqtok decode` either work or raise ValueError (a one-line CLI error, exit 2); never
another exception, and decode never writes outside --out. Inputs are random bytes and random small
mutations of valid PNG, NPZ and JSON files (hypothesis)."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import tiny_model
from vqtok.cli import main
from vqtok.formats.decoder_dir import load_decoder_dir, save_decoder_dir
from vqtok.formats.tokenizer_dir import save_tokenizer_dir
from vqtok.formats.tokens import write_tokens
from vqtok.multimodal import DecoderConfig, MultimodalDecoder, Vocabulary
from vqtok.tokenizer import ImageTokenizer

SETTINGS = settings(max_examples=int(__import__("os").environ.get("VQTOK_FUZZ_EXAMPLES", 60)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6)


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The valid files every example starts from."""
    root = tmp_path_factory.mktemp("originals")
    tok = save_tokenizer_dir(tiny_model().eval(), root / "tok")
    vocab = Vocabulary(image_codebook_size=1000)
    torch.manual_seed(0)
    decoder = MultimodalDecoder(DecoderConfig(vocab_size=vocab.size, d_model=16, n_layers=1,
                                              n_heads=2))
    dec = save_decoder_dir(decoder, vocab, root / "dec", (4, 4),
                           caption_template="a photo of a {label}")
    npz = write_tokens(root / "t.npz", names=["a.png", "sub/b.png"], paths=["a.png", "b.png"],
                       sizes=[(16, 16), (13, 15)], grids=[np.ones((4, 4), np.int64),
                                                          np.zeros((4, 4), np.int64)],
                       failed=[], codebook_size=1000, downsample_factor=4)
    png = io.BytesIO()
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    return {"tok/config.json": (tok / "config.json").read_bytes(),
            "tok/model.safetensors": (tok / "model.safetensors").read_bytes(),
            "dec/config.json": (dec / "config.json").read_bytes(),
            "dec/model.safetensors": (dec / "model.safetensors").read_bytes(),
            "t.npz": npz.read_bytes(), "a.png": png.getvalue()}


def mutate_bytes(data: st.DataObject, raw: bytes) -> bytes:
    """Random bytes, or the file cut, or a few bytes flipped or inserted."""
    kind = data.draw(st.sampled_from(["random", "truncate", "flip", "insert"]))
    if kind == "random":
        return data.draw(st.binary(max_size=512))
    if kind == "truncate":
        return raw[:data.draw(st.integers(0, max(0, len(raw) - 1)))]
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[at] ^= data.draw(st.integers(1, 255))
        else:
            out[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    return bytes(out)


def mutate_json(data: st.DataObject, raw: bytes) -> bytes:
    """Delete, replace or add one key somewhere in the document."""
    doc = json.loads(raw)
    node = doc
    while isinstance(node, dict) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node)))
        if not isinstance(node[key], dict):
            break
        node = node[key]
    if not isinstance(node, dict) or not node:
        return json.dumps(data.draw(JSON_VALUES)).encode()
    key = data.draw(st.sampled_from(sorted(node)))
    action = data.draw(st.sampled_from(["delete", "replace", "add"]))
    if action == "delete":
        del node[key]
    elif action == "replace":
        node[key] = data.draw(JSON_VALUES)
    else:
        node[data.draw(st.text(min_size=1, max_size=8))] = data.draw(JSON_VALUES)
    return json.dumps(doc).encode()


def write_model_dir(root: Path, files: dict[str, bytes], prefix: str,
                    data: st.DataObject) -> Path:
    """A copy of a model directory with one of its files mutated (sometimes the config
    without its checksum, so that mutated weights reach the safetensors reader)."""
    folder = root / prefix
    folder.mkdir()
    config, weights = files[f"{prefix}/config.json"], files[f"{prefix}/model.safetensors"]
    target = data.draw(st.sampled_from(["config", "config-json", "weights"]))
    if target == "weights" and data.draw(st.booleans()):
        doc = json.loads(config)
        doc.pop("weights_sha256")
        config = json.dumps(doc).encode()
    if target == "config":
        config = mutate_bytes(data, config)
    elif target == "config-json":
        config = mutate_json(data, config)
    else:
        weights = mutate_bytes(data, weights)
    (folder / "config.json").write_bytes(config)
    (folder / "model.safetensors").write_bytes(weights)
    return folder


@given(data=st.data())
@SETTINGS
def test_tokenizer_loading_raises_only_value_error(originals: dict[str, bytes],
                                                   data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_dir(Path(tmp), originals, "tok", data)
        try:
            ImageTokenizer.from_pretrained(folder)
        except ValueError:
            pass


@given(data=st.data())
@SETTINGS
def test_decoder_loading_raises_only_value_error(originals: dict[str, bytes],
                                                 data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_dir(Path(tmp), originals, "dec", data)
        try:
            load_decoder_dir(folder)
        except ValueError:
            pass


def mutate_npz(data: st.DataObject, raw: bytes) -> bytes:
    """Byte-level damage, or one array replaced by a random small array."""
    if data.draw(st.booleans()):
        return mutate_bytes(data, raw)
    with np.load(io.BytesIO(raw)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    key = data.draw(st.sampled_from(sorted(arrays)))
    dtype = data.draw(st.sampled_from([np.int64, np.int32, np.uint8, np.float32, np.bool_,
                                       "U8"]))
    shape = tuple(data.draw(st.lists(st.integers(0, 3), max_size=2)))
    if dtype == "U8":
        value = np.array(data.draw(st.lists(st.text(max_size=8), min_size=int(np.prod(shape)),
                                            max_size=int(np.prod(shape)))),
                         dtype="U8").reshape(shape)
    else:
        value = np.asarray(data.draw(st.lists(st.integers(-(2**31), 2**31 - 1),
                                              min_size=int(np.prod(shape)),
                                              max_size=int(np.prod(shape))))
                           ).astype(dtype).reshape(shape)
    arrays[key] = value
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


@given(data=st.data())
@SETTINGS
def test_decode_fails_cleanly_and_writes_only_inside_out(
        originals: dict[str, bytes], data: st.DataObject,
        capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = root / "tok"
        tok.mkdir()
        for name in ("config.json", "model.safetensors"):
            (tok / name).write_bytes(originals[f"tok/{name}"])
        npz = root / "t.npz"
        source = data.draw(st.sampled_from(["t.npz", "a.png"]))  # a PNG where an .npz goes
        npz.write_bytes(mutate_npz(data, originals["t.npz"]) if source == "t.npz"
                        else mutate_bytes(data, originals["a.png"]))
        before = {p for p in root.rglob("*")}
        status = main(["decode", str(npz), "--tokenizer", str(tok), "--out",
                       str(root / "out"), "--quiet"])
        err = capsys.readouterr().err
        assert status in (0, 2), err  # 1 would be an error vqtok did not foresee
        if status == 2:
            assert len(err.strip().splitlines()) == 1
        new = {p for p in root.rglob("*")} - before
        assert all(p == root / "out" or (root / "out") in p.parents for p in new), new


@given(data=st.data())
@SETTINGS
def test_reading_an_image_file_raises_only_value_error(originals: dict[str, bytes],
                                                       data: st.DataObject) -> None:
    from vqtok.formats.images import load_image

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.png"
        path.write_bytes(mutate_bytes(data, originals["a.png"]))
        try:
            load_image(path)
        except ValueError as err:
            assert str(path) in str(err)
