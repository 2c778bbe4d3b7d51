"""Property: whatever the bytes on disk, reading an image or a GIF, loading a tokenizer or a
decoder, and `vqtok decode` either work or raise ValueError (a one-line CLI error, exit 2);
never another exception, and decode never writes outside --out. Inputs are random bytes and
random small mutations of valid PNG, NPZ and JSON files, GIFs written block by block with
random screens, frames and cuts, and configs with random widths and depths (hypothesis).
Sizes a file declares never make vqtok decode or allocate beyond its budget."""

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
from vqtok.formats.tokenizer_dir import save_tokenizer_dir
from vqtok.formats.tokens import write_tokens
from vqtok.lm import LMConfig, MultimodalLM, Vocabulary
from vqtok.lm.lm_dir import load_lm_dir, save_lm_dir
from vqtok.tokenizers import ImageTokenizer, VideoTokenizer

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
    decoder = MultimodalLM(LMConfig(vocab_size=vocab.size, d_model=16, n_layers=1,
                                              n_heads=2))
    dec = save_lm_dir(decoder, vocab, root / "dec", (4, 4),
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
            load_lm_dir(folder)
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


# ---- sizes a file declares: never decoded or allocated beyond the budget -------------

FUZZ_CLIP_PIXELS = 1 << 16
"""The clip budget of the GIF examples: any clip decoded within it is small."""


def fuzz_gif(data: st.DataObject) -> bytes:
    """A GIF written block by block (GIF89a): a random logical screen and frame count, a
    colour table or none, extension blocks; the frames either all whole one-pixel images
    (a GIF Pillow decodes to the end) or random image descriptors (extents and offsets,
    some beyond the screen) with one pixel of data or a random LZW stream; then maybe cut
    short or with a few bytes flipped."""
    import struct

    width, height = (data.draw(st.sampled_from([0, 1, 3, 16, 255, 4096, 65535]))
                     for _ in range(2))
    table = data.draw(st.booleans())
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80 if table else 0,
                                            0, 0) + (b"\x00" * 3 + b"\xff" * 3 if table else b""))
    whole = data.draw(st.booleans())
    for _ in range(data.draw(st.sampled_from([0, 1, 2, 5, 40, 1001]))):
        if data.draw(st.booleans()):
            out += b"\x21\xf9\x04" + bytes([data.draw(st.integers(0, 31))]) + b"\x0a\x00\x00\x00"
        if whole:
            out += b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
            continue
        extent = [data.draw(st.sampled_from([0, 1, 2, 8, 300, 65535])) for _ in range(4)]
        out += b"," + struct.pack("<HHHHB", *extent, data.draw(st.sampled_from([0, 0x40, 0x80])))
        out += (b"\x02\x02\x44\x01\x00" if data.draw(st.booleans())
                else bytes([data.draw(st.integers(0, 9))]) + data.draw(st.binary(max_size=12)))
    out += b";" if data.draw(st.booleans()) else b""
    if data.draw(st.booleans()):
        return mutate_bytes(data, bytes(out))
    return bytes(out)


@given(data=st.data())
@SETTINGS
def test_reading_a_gif_decodes_within_the_budget_or_raises_value_error(
        data: st.DataObject, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqtok.formats import videos

    converted: list[int] = []
    real = videos.to_uint8_pixels

    def counted(image, channels):  # every decoded frame passes through here
        converted.append(image.size[0] * image.size[1])
        if sum(converted) > FUZZ_CLIP_PIXELS:  # stop here; the test fails below
            raise MemoryError("decoded beyond the budget")
        return real(image, channels)

    monkeypatch.setattr(videos, "to_uint8_pixels", counted)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.gif"
        path.write_bytes(fuzz_gif(data))
        try:
            frames = videos.load_video(path, channels=1, max_pixels=FUZZ_CLIP_PIXELS)
        except ValueError as err:
            assert str(err).startswith(f"{path}: ") and "\n" not in str(err), err
        else:
            assert frames.dtype == np.uint8 and frames.ndim == 4
            assert frames.shape[0] * frames.shape[1] * frames.shape[2] <= FUZZ_CLIP_PIXELS
        assert sum(converted) <= FUZZ_CLIP_PIXELS, "decoded beyond the budget"


MAX_BUILT_BYTES = 64 << 20
"""The most a fuzzed model directory may make vqtok allocate: the files here hold a few
hundred KB, so anything near this is a model built from its config alone."""


@pytest.fixture(scope="module")
def video_originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from tests.test_video_tokenizer import video_model

    tok = save_tokenizer_dir(video_model().eval(), tmp_path_factory.mktemp("video") / "tok")
    return {f"tok/{name}": (tok / name).read_bytes()
            for name in ("config.json", "model.safetensors")}


def resize_config(data: st.DataObject, raw: bytes, kind: str) -> bytes:
    """The config with its sizes redrawn: widths, depths and levels within their caps
    (tokenizers), or the decoder's width, depth and heads."""
    doc = json.loads(raw)
    sizes = st.sampled_from([1, 2, 3, 4, 8, 64, 512, 8192])
    if kind == "dec":
        config = doc["decoder"]["init_args"]["config"]
        for key in ("d_model", "n_layers", "n_heads"):
            if data.draw(st.booleans()):
                config[key] = data.draw(st.sampled_from([1, 2, 16, 64, 512, 16384]))
        return json.dumps(doc).encode()
    for role in ("encoder", "decoder"):
        args = doc[role]["init_args"]
        if data.draw(st.booleans()):
            args["channels"] = data.draw(sizes)
        if data.draw(st.booleans()):
            args["num_res_blocks"] = data.draw(st.sampled_from([0, 1, 2, 64]))
        if data.draw(st.booleans()):
            args["channel_mult"] = data.draw(st.lists(st.sampled_from([1, 2, 4]), min_size=1,
                                                      max_size=8))
        if data.draw(st.booleans()):
            args["dim"] = data.draw(sizes)
    return json.dumps(doc).encode()


@given(data=st.data())
@settings(SETTINGS, max_examples=min(SETTINGS.max_examples, 20))  # each builds models
def test_config_sizes_never_allocate_beyond_the_weights(
        originals: dict[str, bytes], video_originals: dict[str, bytes], data: st.DataObject,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import itertools

    from vqtok import registry

    real = registry.build

    def guarded(spec):  # a real build (not on the meta device) must be small
        if torch.get_default_device().type != "meta":
            with torch.device("meta"):
                skeleton = real(spec)
            size = sum(t.numel() * t.element_size()
                       for t in itertools.chain(skeleton.parameters(), skeleton.buffers()))
            assert size <= MAX_BUILT_BYTES, f"allocating {size:,} bytes from a config"
        return real(spec)

    monkeypatch.setattr(registry, "build", guarded)
    kind = data.draw(st.sampled_from(["tok", "video", "dec"]))
    files = video_originals if kind == "video" else originals
    prefix = "dec" if kind == "dec" else "tok"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / prefix
        folder.mkdir()
        config = json.loads(resize_config(data, files[f"{prefix}/config.json"],
                                          "dec" if kind == "dec" else "tok"))
        config.pop("weights_sha256")  # so that the sizes, not the checksum, are judged
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "model.safetensors").write_bytes(files[f"{prefix}/model.safetensors"])
        try:
            (load_lm_dir if kind == "dec" else ImageTokenizer.from_pretrained
             if kind == "tok" else VideoTokenizer.from_pretrained)(folder)
        except ValueError as err:
            assert "\n" not in str(err), err
