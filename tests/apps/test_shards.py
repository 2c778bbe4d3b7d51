"""`vqtok encode --shard-size`: a sharded token dataset (docs/formats.md#token-shards).

Every test compares against independent references: each row's ids against
`ImageTokenizer.encode` of that one image, a resumed or two-process dataset against the
bytes of an uninterrupted one-process run, the manifest's checksums against the files."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import FASHION_MNIST, ROOT, needs_fashion_mnist, tiny_model, vqtok_cli
from vqtok.cli import main
from vqtok.formats import token_shards as fmt
from vqtok.tokenizers import ImageTokenizer

pytest.importorskip("pyarrow", reason="the shards extra: pip install vqtok[shards]")
pytest.importorskip("webdataset", reason="the shards extra: pip install vqtok[shards]")

TOKENIZER = ROOT / "checkpoints" / "fmnist_fsq"
THREADS = {"OMP_NUM_THREADS": "1"}
COUNT = 300  # Fashion-MNIST test images in the default suite; all 10,000 under -m slow


def fmnist_pngs(folder: Path, count: int) -> dict[str, np.ndarray]:
    """The first ``count`` Fashion-MNIST test images, padded to 32 x 32, as PNG files in
    ``folder``; returns name -> pixels."""
    from vqtok.data import FashionMNIST

    images = FashionMNIST(FASHION_MNIST, "test", pad_to=32).images[:count].numpy()
    folder.mkdir(parents=True, exist_ok=True)
    pixels = {}
    for i, image in enumerate(images):
        name = f"{i:05d}.png"
        Image.fromarray(image).save(folder / name)
        pixels[name] = image
    return pixels


@pytest.fixture(scope="module")
def tok() -> ImageTokenizer:
    return ImageTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    if not FASHION_MNIST.is_dir():
        pytest.skip(needs_fashion_mnist.kwargs["reason"])
    folder = tmp_path_factory.mktemp("fmnist") / "images"
    return folder, fmnist_pngs(folder, COUNT)


@pytest.fixture(scope="module")
def reference(fmnist: tuple[Path, dict[str, np.ndarray]], tmp_path_factory: pytest.TempPathFactory
              ) -> Path:
    """An uninterrupted one-process run (shards of 64)."""
    out = tmp_path_factory.mktemp("reference") / "tokens"
    assert main(["encode", str(fmnist[0]), "--tokenizer", str(TOKENIZER), "--out", str(out),
                 "--shard-size", "64", "--quiet"]) == 0
    return out


def rows_by_name(out: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    for rows in fmt.TokenShards(out):
        for name, ids in zip(rows.names, rows.ids):
            assert name not in found, f"{name} twice"
            found[name] = ids
    return found


def files_of(out: Path) -> dict[str, bytes]:
    """Every file of a dataset folder, hidden ones too, by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def assert_equals_encode(out: Path, pixels: dict[str, np.ndarray], tok: ImageTokenizer) -> None:
    """Each row's ids equal ImageTokenizer.encode of that image (whose ids do not depend
    on the batch: tests/test_tokenizer.py); nothing missing."""
    rows = rows_by_name(out)
    assert sorted(rows) == sorted(pixels)
    names = sorted(pixels)
    want = tok.encode([pixels[name] for name in names], batch_size=64).numpy()
    for name, ids in zip(names, want):
        assert np.array_equal(rows[name], ids), name


@needs_fashion_mnist
def test_one_process_writes_verified_shards_equal_to_encode(reference: Path, fmnist, tok
                                                            ) -> None:
    import pyarrow.parquet as pq

    assert_equals_encode(reference, fmnist[1], tok)
    dataset = fmt.TokenShards(reference)
    dataset.verify()  # sizes, SHA-256, footers, rows and id counts against the manifest
    manifest = dataset.manifest
    assert manifest["complete"] and manifest["rows"] == COUNT and manifest["failed"] == []
    assert manifest["tokens"] == COUNT * 64 and manifest["grids"] == [{"shape": [8, 8],
                                                                      "count": COUNT}]
    assert manifest["tokenizer"]["codebook_size"] == 1000 and manifest["id_dtype"] == "uint16"
    assert [s["rows"] for s in manifest["shards"]] == [64, 64, 64, 64, COUNT - 256]
    for entry in manifest["shards"]:  # a reader without vqtok sees the smallest id type
        schema = pq.read_schema(reference / entry["file"])
        assert str(schema.field("ids").type) == "list<element: uint16>"
    rows = next(iter(dataset))
    assert rows.names[:2] == ["00000.png", "00001.png"]
    assert rows.sources[0] == str(fmnist[0] / "00000.png") and rows.captions[0] is None
    assert rows.sizes[0] == (32, 32) and rows.frames[0] is None
    # a changed byte is found by verify
    path = reference / manifest["shards"][1]["file"]
    data = bytearray(path.read_bytes())
    try:
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))
        with pytest.raises(ValueError, match="SHA-256"):
            fmt.TokenShards(reference).verify()
    finally:
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))


def test_id_dtype_is_the_smallest_that_holds_the_codebook() -> None:
    assert fmt.id_dtype(256) == np.uint8 and fmt.id_dtype(257) == np.uint16
    assert fmt.id_dtype(65536) == np.uint16 and fmt.id_dtype(65537) == np.uint32
    assert fmt.id_dtype(1 << 32) == np.uint32 and fmt.id_dtype((1 << 32) + 1) == np.uint64


@needs_fashion_mnist
def test_two_processes_write_the_same_dataset(reference: Path, fmnist, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    done = vqtok_cli(["encode", str(fmnist[0]), "--tokenizer", str(TOKENIZER), "--out",
                      str(out), "--shard-size", "64", "--devices", "2", "--accelerator", "cpu",
                      "--strategy", "ddp", "--quiet"], tmp_path, env=THREADS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in done.stderr  # two processes ran
    assert done.stdout.count("encoded") == 1  # rank 0 alone prints the summary
    assert files_of(out) == files_of(reference)  # byte for byte, manifest included


def _killed_then_resumed(source: Path, out: Path, cwd: Path, shard_size: int,
                         after_shards: int) -> tuple[set[str], dict[str, int], str]:
    """Start `vqtok encode`, SIGKILL it once ``after_shards`` shards are on disk, rerun it;
    returns the shards that were there when it died, their inodes, and the rerun's stdout."""
    args = [str(Path(sys.executable).with_name("vqtok")), "encode", str(source), "--tokenizer",
            str(TOKENIZER), "--out", str(out), "--shard-size", str(shard_size), "--quiet"]
    env = {**os.environ, **THREADS}
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    shards = out / "shards"
    # A guard against a hung encoder, not a speed target: on a busy machine the first
    # shards can take minutes.
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and process.poll() is None:
        if shards.is_dir() and len(list(shards.glob("*.parquet"))) >= after_shards:
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "finished before it was killed"
    assert len(list(shards.glob("*.parquet"))) >= after_shards, "no shard within 900 s"
    kept = {p.name for p in shards.glob("*.parquet")}
    inodes = {name: (shards / name).stat().st_ino for name in kept}
    assert not fmt.read_manifest(out)["complete"]
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return kept, inodes, done.stdout


@needs_fashion_mnist
def test_a_run_killed_mid_way_resumes_to_the_uninterrupted_content(reference: Path, fmnist,
                                                                   tmp_path: Path) -> None:
    # shards of 64 like the reference, so the resumed files must equal its files
    out = tmp_path / "tokens"
    kept, inodes, stdout = _killed_then_resumed(fmnist[0], out, tmp_path, 64, after_shards=1)
    assert 1 <= len(kept) < 5
    # only the missing parts were encoded: the kept shards are the same files
    assert f"{5 - len(kept)} shards written, {len(kept)} kept" in stdout
    assert {name: (out / "shards" / name).stat().st_ino for name in kept} == inodes
    assert files_of(out) == files_of(reference)  # no temporary file left, no duplicate


@pytest.mark.slow
@needs_fashion_mnist
def test_the_whole_test_split_one_two_and_killed_processes_agree(tmp_path: Path,
                                                                 tok: ImageTokenizer) -> None:
    """The acceptance test at full size: the 10,000 Fashion-MNIST test images."""
    pixels = fmnist_pngs(tmp_path / "images", 10_000)
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    common = ["--tokenizer", str(TOKENIZER), "--shard-size", "1000", "--quiet"]
    done = vqtok_cli(["encode", str(tmp_path / "images"), "--out", str(one), *common], tmp_path,
                     env=THREADS, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    done = vqtok_cli(["encode", str(tmp_path / "images"), "--out", str(two), *common,
                      "--devices", "2", "--accelerator", "cpu", "--strategy", "ddp"], tmp_path,
                     env=THREADS, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    kept, _, _ = _killed_then_resumed(tmp_path / "images", killed, tmp_path, 1000,
                                      after_shards=4)
    assert 4 <= len(kept) < 10
    fmt.TokenShards(one).verify()
    assert files_of(one) == files_of(two) == files_of(killed)
    assert_equals_encode(one, pixels, tok)


@needs_fashion_mnist
def test_another_tokenizer_input_list_or_shard_size_is_refused(reference: Path, fmnist,
                                                               tmp_path: Path, capsys) -> None:
    out = tmp_path / "tokens"
    shutil.copytree(reference, out)
    before = files_of(out)
    other = tmp_path / "other_tok"
    ImageTokenizer(tiny_model(in_channels=1)).save_pretrained(other)
    more = tmp_path / "more"
    shutil.copytree(fmnist[0], more)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(more / "extra.png")
    cases = [
        (["--tokenizer", str(other), "--shard-size", "64", str(fmnist[0])],
         "holds the tokens of another tokenizer"),
        (["--tokenizer", str(TOKENIZER), "--shard-size", "64", str(more)],
         "was written from other inputs"),
        (["--tokenizer", str(TOKENIZER), "--shard-size", "32", str(fmnist[0])],
         "was written with --shard-size 64"),
    ]
    for args, message in cases:
        assert main(["encode", *args, "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert files_of(out) == before
    # a folder of other files is not taken for a dataset
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    assert main(["encode", str(fmnist[0]), "--tokenizer", str(TOKENIZER), "--out",
                 str(tmp_path / "notes"), "--shard-size", "64", "--quiet"]) == 2
    assert "not a vqtok token dataset" in capsys.readouterr().err
    assert (tmp_path / "notes" / "a.txt").read_text() == "mine"
    # --overwrite starts again with the new tokenizer
    assert main(["encode", str(fmnist[0]), "--tokenizer", str(other), "--out", str(out),
                 "--shard-size", "64", "--overwrite", "--quiet"]) == 0
    assert fmt.read_manifest(out)["tokenizer"]["codebook_size"] == 1000
    assert fmt.read_manifest(out)["run"] != json.loads(before["manifest.json"])["run"]


# ---- webdataset tars as inputs ---------------------------------------------------------


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def rgb(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_tar_inputs_keep_captions_and_refuse_bad_members_one_by_one(tmp_path: Path
                                                                    ) -> None:
    tok_dir = tmp_path / "tok"
    tok = ImageTokenizer(tiny_model())
    tok.save_pretrained(tok_dir)
    images = {f"{i:03d}": rgb(i) for i in range(7)}
    members = []
    for key, image in images.items():
        members.append((f"{key}.png", b"not a png" if key == "004" else png_bytes(image)))
        if key == "001":
            members.append((f"{key}.txt", "une robe d’été\n".encode()))
        if key == "002":
            members.append((f"{key}.json", json.dumps({"caption": "a red bag"}).encode()))
        if key == "003":
            members.append((f"{key}.txt", b"caf\xe9"))  # Latin-1, not UTF-8
    first = write_tar(tmp_path / "a.tar", members)
    full = write_tar(tmp_path / "b.tar", [(f"b{k}.png", png_bytes(rgb(50 + k))) for k in range(3)])
    whole = write_tar(tmp_path / "whole.tar", [(f"c{k}.png", png_bytes(rgb(60 + k)))
                                               for k in range(3)])
    with tarfile.open(whole) as tar:
        second = tar.getmembers()[1].offset_data
    cut = tmp_path / "c.tar"
    cut.write_bytes(whole.read_bytes()[:second + 100])  # breaks off inside the second member
    out = tmp_path / "tokens"
    done = vqtok_cli(["encode", str(first), str(full), str(cut), "--tokenizer", str(tok_dir),
                      "--out", str(out), "--shard-size", "4", "--quiet"], tmp_path, env=THREADS)
    err = done.stderr
    assert done.returncode == 1, err  # some items failed; the others are in the dataset
    assert "003.png" in err and "not UTF-8" in err and "004.png" in err
    assert "c.tar: the tar breaks off" in err and "Traceback" not in err
    dataset = fmt.TokenShards(out)
    dataset.verify()
    rows = {name: (ids, caption, where) for shard in dataset
            for name, ids, caption, where in zip(shard.names, shard.ids, shard.captions,
                                                 shard.sources)}
    for key, image in images.items():
        if key in ("003", "004"):
            assert f"{key}.png" not in rows
            continue
        ids, caption, where = rows[f"{key}.png"]
        assert np.array_equal(ids, tok.encode(image)[0].numpy())
        assert where == f"{first}:{key}.png"
        assert caption == {"001": "une robe d’été", "002": "a red bag"}.get(key)
    for k in range(3):
        assert np.array_equal(rows[f"b{k}.png"][0], tok.encode(rgb(50 + k))[0].numpy())
    assert rows["b0.png"][2] == f"{full}:b0.png"
    assert np.array_equal(rows["c0.png"][0], tok.encode(rgb(60))[0].numpy())  # before the cut
    assert "c1.png" not in rows and "c2.png" not in rows
    failed = dataset.manifest["failed"]
    assert [f[0] for f in failed] == [f"{first}:003.png", f"{first}:004.png", str(cut)]
    # a.tar: 7 samples in parts of 4 and 3; b.tar one part; c.tar its readable part
    assert [(s["source"], s["part"]) for s in dataset.manifest["shards"]] == [
        (0, 0), (0, 1), (1, 0), (2, 0)]


def test_a_full_disk_stops_with_one_line_and_complete_shards(tmp_path: Path) -> None:
    """On a 48 KiB tmpfs (mounted in a user namespace; skipped where none can be made)."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs unshare and user namespaces)")
    tok_dir = tmp_path / "tok"
    ImageTokenizer(tiny_model()).save_pretrained(tok_dir)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(240):
        Image.fromarray(rgb(i)).save(images / f"{i:03d}.png")
    mount, keep = tmp_path / "small", tmp_path / "kept"
    mount.mkdir()
    vqtok = Path(sys.executable).with_name("vqtok")
    script = (f"mount -t tmpfs -o size=48k none {mount} && {vqtok} encode {images} "
              f"--tokenizer {tok_dir} --out {mount}/tokens --shard-size 8 --quiet; "
              f"echo status=$?; cp -a {mount}/tokens {keep}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                          text=True, check=False, env={**os.environ, **THREADS}, timeout=300)
    assert "status=1" in done.stdout, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "No space left on device" in errors[0], done.stderr
    assert "rerun the same command" in errors[0] and "Traceback" not in done.stderr
    manifest = fmt.read_manifest(keep)
    assert not manifest["complete"] and manifest["shards"] == []
    shards = sorted((keep / "shards").iterdir())
    assert shards and all(not p.name.startswith(".") for p in shards)  # no half-written file
    tok = ImageTokenizer.from_pretrained(tok_dir)
    for path in shards:  # each complete, and right
        rows = fmt.read_shard(path)
        assert fmt.read_shard_meta(path)["rows"] == len(rows) == 8
        for name, ids in zip(rows.names, rows.ids):
            image = np.asarray(Image.open(images / name))
            assert np.array_equal(ids, tok.encode(image)[0].numpy())
    assert len(shards) < 30


def test_clips_with_captions_into_shards(tmp_path: Path) -> None:
    from tests.test_video_tokenizer import clip, video_model
    from vqtok import VideoTokenizer
    from vqtok.formats.videos import save_gif

    tok_dir = VideoTokenizer(video_model()).save_pretrained(tmp_path / "tok")
    tok = VideoTokenizer.from_pretrained(tok_dir)
    folder = tmp_path / "clips"
    folder.mkdir()
    clips = {f"c{i}.gif": clip(9 if i % 2 else 5, seed=i) for i in range(3)}
    for name, x in clips.items():
        save_gif(x, folder / name)
    (folder / "c1.txt").write_text("a square moving right")
    (folder / "bad.gif").write_bytes(b"GIF89a broken")
    out = tmp_path / "tokens"
    assert main(["encode", str(folder), "--tokenizer", str(tok_dir), "--out", str(out),
                 "--shard-size", "2", "--quiet"]) == 1  # bad.gif failed, the rest is there
    dataset = fmt.TokenShards(out)
    dataset.verify()
    assert dataset.manifest["tokenizer"]["kind"] == "video"
    assert [f[0] for f in dataset.manifest["failed"]] == [str(folder / "bad.gif")]
    rows = {n: (ids, cap, frames) for shard in dataset
            for n, ids, cap, frames in zip(shard.names, shard.ids, shard.captions, shard.frames)}
    assert sorted(rows) == sorted(clips)
    for name, x in clips.items():
        ids, caption, frames = rows[name]
        assert frames == len(x) and ids.shape == (1 + (len(x) - 1) // 4, 4, 4)
        assert np.array_equal(ids, tok.encode(x).numpy())
        assert caption == ("a square moving right" if name == "c1.gif" else None)


def test_a_failed_write_stops_the_run_and_a_rerun_finishes_it(tmp_path: Path,
                                                               monkeypatch) -> None:
    """ENOSPC simulated in the shard writer (the tmpfs test above is the real one), then the
    same command again: the dataset equals an uninterrupted run's."""
    import errno

    from vqtok.apps.shards import encode_shards

    tok_dir = tmp_path / "tok"
    ImageTokenizer(tiny_model()).save_pretrained(tok_dir)
    tok = ImageTokenizer.from_pretrained(tok_dir)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(40):
        Image.fromarray(rgb(i)).save(images / f"{i:03d}.png")
    whole = tmp_path / "whole"
    encode_shards([images], tok, tok_dir, whole, 8, progress=False)
    writes = []
    real = fmt.atomic_write_bytes

    def full_after_two(path, data):
        writes.append(path)
        if len(writes) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(fmt, "atomic_write_bytes", full_after_two)
    out = tmp_path / "tokens"
    with pytest.raises(OSError, match="No space left on device.*rerun the same command"):
        encode_shards([images], tok, tok_dir, out, 8, progress=False)
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "000000-00000.parquet", "000001-00000.parquet"]
    assert not fmt.read_manifest(out)["complete"]
    monkeypatch.undo()
    summary = encode_shards([images], tok, tok_dir, out, 8, progress=False)
    assert (summary.written, summary.encoded, summary.shards) == (3, 24, 5)
    assert files_of(out) == files_of(whole)


def test_tars_and_processes_need_shard_size(tmp_path: Path, capsys) -> None:
    tar = write_tar(tmp_path / "a.tar", [("0.png", png_bytes(rgb(0)))])
    tok_dir = ImageTokenizer(tiny_model()).save_pretrained(tmp_path / "tok")
    common = ["--tokenizer", str(tok_dir), "--out", str(tmp_path / "t.npz"), "--quiet"]
    assert main(["encode", str(tar), *common]) == 2
    assert "add --shard-size N" in capsys.readouterr().err
    assert main(["encode", str(tok_dir), "--devices", "2", *common]) == 2
    assert "need --shard-size" in capsys.readouterr().err
    assert main(["encode", str(tar), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "d"),
                 "--shard-size", "0", "--quiet"]) == 2
    assert "shard_size must be a positive int, got 0" in capsys.readouterr().err
    assert not (tmp_path / "t.npz").exists() and not (tmp_path / "d").exists()
