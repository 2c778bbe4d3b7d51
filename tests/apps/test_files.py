"""encode_files / decode_file: folders with bad files, the .npz content, validation, atomicity."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vqtok.formats.atomic
from tests.helpers import tiny_model
from vqtok.apps.files import decode_file, default_workers, encode_files
from vqtok.formats.tokens import read_tokens
from vqtok.tokenizers import ImageTokenizer

K = 8 * 5 * 5 * 5


@pytest.fixture(scope="module")
def tok() -> ImageTokenizer:
    return ImageTokenizer(tiny_model())


def pixels(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


GOOD = {  # relative name -> (height, width)
    "a.png": (16, 16),
    "b.jpg": (16, 16),
    "sub/c.png": (30, 27),
    "sub/deeper/d.bmp": (12, 20),
    "e.png": (16, 16),
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for i, (name, (h, w)) in enumerate(GOOD.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels(h, w, i)).save(root / name)
    full = (root / "a.png").read_bytes()
    (root / "truncated.png").write_bytes(full[: len(full) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("not an image at all")
    Image.fromarray(pixels(2, 9, 9)).save(root / "tiny.png")
    (root / "notes.txt").write_text("ignored: not an image suffix")
    (root / ".hidden.png").write_bytes(b"ignored: hidden")
    return root


BAD = {"truncated.png": "cannot read", "empty.png": "cannot read", "text.jpg": "cannot read",
       "tiny.png": "2x9 pixels"}


def test_folder_with_bad_files(folder: Path, tok: ImageTokenizer, tmp_path: Path) -> None:
    out = tmp_path / "tokens.npz"
    summary = encode_files([folder], tok, out, batch_size=3, progress=False)
    assert summary.encoded == len(GOOD) and summary.out_path == out
    failed = {Path(p).name: reason for p, reason in summary.failed}
    assert failed.keys() == BAD.keys()
    for name, match in BAD.items():
        assert match in failed[name], (name, failed[name])
        assert name in str(summary)
    tokens = read_tokens(out)
    assert sorted(tokens.names) == sorted(GOOD)
    assert summary.tokens == sum(g.size for g in tokens.ids)
    with np.load(out, allow_pickle=False) as data:
        assert sorted(Path(p).name for p in data["failed_paths"]) == sorted(BAD)
        assert int(data["codebook_size"]) == K and int(data["tokenizer_format_version"]) == 1
    # every stored grid equals encoding that file alone; sizes are the originals
    for name, ids, size in zip(tokens.names, tokens.ids, tokens.sizes):
        assert size == GOOD[name]
        alone = tok.encode(Image.open(folder / name))[0]
        assert np.array_equal(ids, alone.numpy()), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "tokens.npz"]


def test_batch_size_does_not_change_the_file(folder: Path, tok: ImageTokenizer,
                                             tmp_path: Path) -> None:
    encode_files([folder], tok, tmp_path / "one.npz", batch_size=1, progress=False)
    encode_files([folder], tok, tmp_path / "many.npz", batch_size=16, progress=True)
    one, many = read_tokens(tmp_path / "one.npz"), read_tokens(tmp_path / "many.npz")
    assert one.names == many.names and one.sizes == many.sizes
    assert all(np.array_equal(a, b) for a, b in zip(one.ids, many.ids))


def test_explicit_files_and_missing_paths(folder: Path, tok: ImageTokenizer,
                                          tmp_path: Path) -> None:
    summary = encode_files([folder / "a.png", folder / "text.jpg"], tok, tmp_path / "t.npz",
                           progress=False)
    assert summary.encoded == 1 and [Path(p).name for p, _ in summary.failed] == ["text.jpg"]
    with pytest.raises(ValueError, match="nowhere.png: no such file"):
        encode_files([folder / "nowhere.png"], tok, tmp_path / "t2.npz", progress=False)
    (tmp_path / "void").mkdir()
    with pytest.raises(ValueError, match="no image files found"):
        encode_files([tmp_path / "void"], tok, tmp_path / "t2.npz", progress=False)
    assert not (tmp_path / "t2.npz").exists()


def test_decode_file_writes_pngs_named_after_sources(folder: Path, tok: ImageTokenizer,
                                                     tmp_path: Path) -> None:
    npz = tmp_path / "tokens.npz"
    encode_files([folder], tok, npz, progress=False)
    written = decode_file(npz, tok, tmp_path / "out")
    tokens = read_tokens(npz)
    expected = [tmp_path / "out" / Path(n).with_suffix(".png") for n in tokens.names]
    assert written == expected
    for path, ids, size in zip(written, tokens.ids, tokens.sizes):
        image = Image.open(path)
        assert image.size == (size[1], size[0]) and image.mode == "RGB"
        direct = tok.decode(torch.from_numpy(ids)[None], sizes=[size])[0]
        assert np.array_equal(np.asarray(image), np.asarray(direct))
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_name_clashes_get_suffixes(tmp_path: Path, tok: ImageTokenizer) -> None:
    root = tmp_path / "in"
    root.mkdir()
    Image.fromarray(pixels(8, 8, 0)).save(root / "x.png")
    Image.fromarray(pixels(8, 8, 1)).save(root / "x.jpg")
    encode_files([root], tok, tmp_path / "t.npz", progress=False)
    written = decode_file(tmp_path / "t.npz", tok, tmp_path / "out")
    assert sorted(p.name for p in written) == ["x-1.png", "x.png"]


def rewrite(npz: Path, **changes) -> None:
    with np.load(npz, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    np.savez(npz, **arrays)


ONE = {"grids": np.array([[4, 4]]), "sizes": np.array([[16, 16]]), "names": np.array(["a.png"]),
       "paths": np.array(["a.png"])}


@pytest.mark.parametrize("changes, match", [
    ({"ids": None}, r"missing keys \['ids'\]"),
    ({**ONE, "ids": np.full(16, K, np.int64)}, rf"\[0, {K}\), got values in \[{K}, {K}\]"),
    ({"ids": np.zeros(3, np.int64)}, "ids hold 3 values"),
    ({**ONE, "ids": np.zeros(16, np.float32)}, r"ids must be an array of shape \(n,\) of integers"),
    ({"format_version": np.array(2)}, "unsupported format"),
    ({"sizes": np.array([[40, 16]])}, "grids do not match sizes"),
    ({"names": np.array(["../escape.png"])}, "unsafe image name"),
    ({"codebook_size": np.array(4096)}, "codebook_size=4096, downsample_factor=4, num_stages=1, but"),
])
def test_bad_tokens_file(tmp_path: Path, tok: ImageTokenizer, changes, match: str) -> None:
    Image.fromarray(pixels(16, 16, 0)).save(tmp_path / "a.png")
    npz = tmp_path / "t.npz"
    encode_files([tmp_path / "a.png"], tok, npz, progress=False)
    rewrite(npz, **changes)
    with pytest.raises(ValueError, match=match) as info:
        decode_file(npz, tok, tmp_path / "out")
    assert "t.npz" in str(info.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("keep", [0, 50, -20])
def test_corrupt_tokens_file(tmp_path: Path, tok: ImageTokenizer, keep: int) -> None:
    Image.fromarray(pixels(16, 16, 0)).save(tmp_path / "a.png")
    npz = tmp_path / "t.npz"
    encode_files([tmp_path / "a.png"], tok, npz, progress=False)
    data = npz.read_bytes()
    npz.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(ValueError, match="t.npz: not a readable tokens file"):
        decode_file(npz, tok, tmp_path / "out")


def test_failed_write_keeps_previous_npz(tmp_path: Path, tok: ImageTokenizer,
                                         monkeypatch) -> None:
    Image.fromarray(pixels(16, 16, 0)).save(tmp_path / "a.png")
    npz = tmp_path / "t.npz"
    encode_files([tmp_path / "a.png"], tok, npz, progress=False)
    before = npz.read_bytes()

    def crash(fd: int) -> None:  # the temporary file is written, then the disk fills up
        raise OSError("disk full")

    monkeypatch.setattr(vqtok.formats.atomic.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        encode_files([tmp_path / "a.png"], tok, npz, progress=False, overwrite=True)
    assert npz.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "t.npz"]


def test_loader_workers_give_the_same_file(folder: Path, tok: ImageTokenizer,
                                           tmp_path: Path) -> None:
    """Images read in two worker processes, bad files among them, give the file that
    reading them here gives."""
    here = encode_files([folder], tok, tmp_path / "here.npz", progress=False, workers=0)
    there = encode_files([folder], tok, tmp_path / "there.npz", progress=False, workers=2)
    assert here.failed == there.failed and len(there.failed) == len(BAD)
    a, b = read_tokens(tmp_path / "here.npz"), read_tokens(tmp_path / "there.npz")
    assert a.names == b.names and a.sizes == b.sizes
    assert all(np.array_equal(x, y) for x, y in zip(a.ids, b.ids))
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        encode_files([folder], tok, tmp_path / "x.npz", progress=False, workers=-1)


def test_large_images_are_read_alone_in_the_main_process(folder: Path, tok: ImageTokenizer,
                                                         tmp_path: Path, monkeypatch) -> None:
    """Images over ALONE_PIXELS skip the workers and the buckets, and get the same ids."""
    from vqtok.apps import files

    before = encode_files([folder], tok, tmp_path / "a.npz", progress=False, workers=0)
    monkeypatch.setattr(files, "ALONE_PIXELS", 300)  # sub/c.png, 30 x 27, is now large
    read_here: list[str] = []
    real = files.load_image

    def spy(path, *args, **kwargs):
        read_here.append(Path(path).name)  # only this process's reads reach this list
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files, "load_image", spy)
    after = encode_files([folder], tok, tmp_path / "b.npz", progress=False, workers=2)
    assert read_here == ["c.png"]
    assert after.failed == before.failed
    a, b = read_tokens(tmp_path / "a.npz"), read_tokens(tmp_path / "b.npz")
    assert a.names == b.names and all(np.array_equal(x, y) for x, y in zip(a.ids, b.ids))


def test_a_budget_under_alone_pixels_is_the_one_named(folder: Path, tok: ImageTokenizer,
                                                      tmp_path: Path, monkeypatch) -> None:
    """With the tokenizer's budget below ALONE_PIXELS, an image over it fails in the worker
    with the tokenizer's budget in its reason; with a budget above, it is read alone."""
    from vqtok.apps import files

    monkeypatch.setattr(files, "ALONE_PIXELS", 1000)
    monkeypatch.setattr(tok, "max_pixels", 600)  # sub/c.png, 27 x 30 = 810 pixels, is over
    summary = encode_files([folder], tok, tmp_path / "a.npz", progress=False, workers=0)
    reasons = {Path(path).name: reason for path, reason in summary.failed}
    assert reasons["c.png"] == "the image is 27 x 30 = 810 pixels, over the budget of 600 " \
                               "(--max-pixels raises it)"
    monkeypatch.setattr(tok, "max_pixels", 5000)
    monkeypatch.setattr(files, "ALONE_PIXELS", 600)
    summary = encode_files([folder], tok, tmp_path / "b.npz", progress=False, workers=0)
    assert "c.png" not in {Path(path).name for path, _ in summary.failed}


def test_default_workers_leave_two_cores_to_the_model() -> None:
    assert [default_workers(1000, cores) for cores in (1, 2, 3, 4, 6, 8, 64)] == [
        0, 0, 1, 2, 4, 4, 4]
    assert default_workers(64, 8) == 0 and default_workers(65, 8) == 4  # one chunk: none
    assert default_workers(1000) == max(0, min(4, (os.cpu_count() or 1) - 2))
