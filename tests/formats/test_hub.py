"""Tokenizers and decoders from the Hugging Face Hub (docs/formats.md#hugging-face-hub),
offline: each test lays out a Hub cache on disk as ``huggingface_hub`` writes one
(``models--org--name/{blobs,refs,snapshots}``), points ``HF_HUB_CACHE`` at it and sets
``HF_HUB_OFFLINE=1``, so nothing is downloaded. Uploads go to a fake ``HfApi`` that
records its calls. Without ``huggingface_hub``, local paths still load."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model
from vqtok.cli import main
from vqtok.extras import MissingExtraError
from vqtok.formats.hub import looks_like_repo_id
from vqtok.formats.tokenizer_dir import TokenizerFormatError, fingerprint
from vqtok.lm.lm_dir import load_lm_dir
from vqtok.tokenizers import ImageTokenizer

try:
    import huggingface_hub as hub
    import huggingface_hub.constants as hub_constants
except ImportError:  # the tests of local paths without the extra still run
    hub = hub_constants = None
needs_hub = pytest.mark.skipif(hub is None, reason="needs the hub extra: pip install vqtok[hub]")

ROOT = Path(__file__).resolve().parents[2]
FMNIST = ROOT / "checkpoints" / "fmnist_fsq"
DECODER = ROOT / "checkpoints" / "decoder_fmnist"
COMMIT_A = "a" * 40
COMMIT_B = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(cache: Path, repo_id: str, folder: Path, commit: str,
                 ref: str | None = "main", subfolder: str | None = None) -> Path:
    """Lay ``folder``'s files out as the Hub cache holds a downloaded snapshot: content
    in ``blobs/<sha256>``, symlinks to it in ``snapshots/<commit>/`` (or in its
    ``subfolder``), and ``refs/<ref>`` naming the commit. Returns the snapshot folder."""
    org, name = repo_id.split("/")
    storage = cache / f"models--{org}--{name}"
    snapshot = storage / "snapshots" / commit
    target = snapshot if subfolder is None else snapshot / subfolder
    target.mkdir(parents=True, exist_ok=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for file in folder.iterdir():
        blob = storage / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (target / file.name).symlink_to(os.path.relpath(blob, target))
    if ref is not None:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes
    return snapshot


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache under tmp_path, offline. huggingface_hub reads the environment
    when it is imported, so its constants are set too (this process imported it above)."""
    if hub is None:
        pytest.skip("needs the hub extra: pip install vqtok[hub]")
    home = tmp_path / "hf"
    folder = home / "hub"
    folder.mkdir(parents=True)
    for name, value in {"HF_HOME": home, "HF_HUB_CACHE": folder, "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return folder


def images(n: int = 4, size: int = 28) -> list[np.ndarray]:
    return list(np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8))


def test_a_repo_id_loads_the_cached_snapshot_as_the_local_directory_does(cache: Path) -> None:
    put_in_cache(cache, "vqtok-test/fmnist-fsq", FMNIST, COMMIT_A)
    from_hub = ImageTokenizer.from_pretrained("vqtok-test/fmnist-fsq")
    local = ImageTokenizer.from_pretrained(FMNIST)
    for name, tensor in local.model.state_dict().items():
        assert torch.equal(from_hub.model.state_dict()[name], tensor), name
    ids = from_hub.encode(images())
    assert torch.equal(ids, local.encode(images()))
    assert len(torch.unique(ids)) > 1
    assert fingerprint("vqtok-test/fmnist-fsq") == fingerprint(FMNIST)


def test_a_revision_picks_its_commit(cache: Path, tmp_path: Path) -> None:
    other = ImageTokenizer(tiny_model(in_channels=1)).save_pretrained(tmp_path / "other")
    put_in_cache(cache, "vqtok-test/tok", FMNIST, COMMIT_A)              # main
    put_in_cache(cache, "vqtok-test/tok", other, COMMIT_B, ref="v2")    # tag v2
    main_ids = ImageTokenizer.from_pretrained(FMNIST).encode(images())
    other_ids = ImageTokenizer.from_pretrained(other).encode(images())
    assert not torch.equal(main_ids, other_ids)
    for revision, expected in ((None, main_ids), ("main", main_ids), ("v2", other_ids),
                               (COMMIT_B, other_ids), (COMMIT_A, main_ids)):
        got = ImageTokenizer.from_pretrained("vqtok-test/tok", revision=revision)
        assert torch.equal(got.encode(images()), expected), revision


def test_the_checksum_still_guards_a_hub_snapshot(cache: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(FMNIST, damaged)
    data = bytearray((damaged / "model.safetensors").read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    (damaged / "model.safetensors").write_bytes(bytes(data))
    put_in_cache(cache, "vqtok-test/damaged", damaged, COMMIT_A)
    with pytest.raises(TokenizerFormatError, match="SHA-256 is not the weights_sha256"):
        ImageTokenizer.from_pretrained("vqtok-test/damaged")


@pytest.mark.parametrize("name, message", [
    ("vqtok-test/not-cached", (r"^vqtok-test/not-cached: no such local tokenizer directory, "
                               r"and the Hub repo could not be loaded: ")),
    ("org/a..b", (r"^org/a\.\.b: no such local tokenizer directory, and the Hub repo could "
                  r"not be loaded: ")),
    ("no/such/local/dir", r"^no/such/local/dir: not a tokenizer directory"),
    ("nowhere", r"^nowhere: not a tokenizer directory"),
])
def test_neither_a_directory_nor_a_repo_is_one_line(cache: Path, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        ImageTokenizer.from_pretrained(name)
    assert "\n" not in str(info.value)


def test_a_path_object_is_always_local(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    put_in_cache(cache, "vqtok-test/fmnist-fsq", FMNIST, COMMIT_A)
    monkeypatch.chdir(tmp_path)
    assert ImageTokenizer.from_pretrained("vqtok-test/fmnist-fsq").codebook_size == 1000
    with pytest.raises(ValueError, match="^vqtok-test/fmnist-fsq: not a tokenizer directory"):
        ImageTokenizer.from_pretrained(Path("vqtok-test/fmnist-fsq"))


def test_a_revision_of_a_local_path_is_refused() -> None:
    with pytest.raises(ValueError, match="applies to a Hub repo id"):
        ImageTokenizer.from_pretrained(FMNIST, revision="main")


def test_repo_id_shapes() -> None:
    assert looks_like_repo_id("org/name") and looks_like_repo_id("a_b/c.d-1")
    for text in ("name", "org/name/x", "/abs/dir", "./org/name", "~/x", "org/", "/name",
                 "org/-x", "org/.x", "o rg/name", ""):
        assert not looks_like_repo_id(text), text


def test_the_decoder_and_generation_load_from_the_hub(
        cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put_in_cache(cache, "vqtok-test/fmnist-fsq", FMNIST, COMMIT_A)
    put_in_cache(cache, "vqtok-test/decoder", DECODER, COMMIT_A)
    model, vocab, config = load_lm_dir("vqtok-test/decoder")
    local_model, local_vocab, local_config = load_lm_dir(DECODER)
    assert config == local_config and repr(vocab) == repr(local_vocab)
    for name, tensor in local_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    outputs = {}
    for label, decoder, tokenizer in (("hub", "vqtok-test/decoder", "vqtok-test/fmnist-fsq"),
                                      ("local", str(DECODER), str(FMNIST))):
        outputs[label] = tmp_path / f"{label}.png"
        assert main(["generate", "--decoder", decoder, "--tokenizer", tokenizer, "--prompt",
                     "ankle boot", "--out", str(outputs[label]), "--top-k", "5"]) == 0
    # the trained-with check compared the Hub tokenizer's fingerprint: no warning
    assert "is not the one LM" not in capsys.readouterr().err
    assert outputs["hub"].read_bytes() == outputs["local"].read_bytes()


@needs_hub
def test_the_command_reads_the_environment_offline(tmp_path: Path) -> None:
    """A fresh process: huggingface_hub configured by HF_HUB_CACHE and HF_HUB_OFFLINE alone,
    as a user sets them."""
    cache = tmp_path / "hub"
    put_in_cache(cache, "vqtok-test/fmnist-fsq", FMNIST, COMMIT_A)
    picture = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(images(1)[0]).save(picture)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    vqtok = Path(sys.executable).with_name("vqtok")
    out = tmp_path / "ids.npz"
    done = subprocess.run([str(vqtok), "encode", str(picture), "--tokenizer",
                           "vqtok-test/fmnist-fsq", "--out", str(out), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    with np.load(out) as npz:  # docs/formats.md#tokens: grids row-major, concatenated
        ids, grids = npz["ids"], npz["grids"]
    expected = ImageTokenizer.from_pretrained(FMNIST).encode(images(1)).numpy()
    assert grids.tolist() == [[7, 7]]
    np.testing.assert_array_equal(ids, expected.ravel())


class FakeApi:
    """Stands in for huggingface_hub.HfApi: records the calls and what the folder held."""

    calls: ClassVar[list[tuple[str, dict]]] = []

    def __init__(self, token: str | None = None) -> None:
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id: str, **kwargs: object) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs: object) -> str:
        folder = Path(str(kwargs["folder_path"]))
        self.calls.append(("upload_folder", {**kwargs, "files": {
            p.name: p.read_bytes() for p in folder.iterdir()}}))
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/{COMMIT_B}"


@needs_hub
def test_save_pretrained_pushes_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              cache: Path) -> None:
    FakeApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    tokenizer = ImageTokenizer.from_pretrained(FMNIST)
    saved = tokenizer.save_pretrained(tmp_path / "tok", push_to_hub=True,
                                      repo_id="vqtok-test/pushed", private=True, token="hf_x")
    (_, init), (_, create), (_, upload) = FakeApi.calls
    assert init == {"token": "hf_x"}
    assert create == {"repo_id": "vqtok-test/pushed", "repo_type": "model", "private": True,
                      "exist_ok": True}
    assert upload["repo_id"] == "vqtok-test/pushed" and upload["repo_type"] == "model"
    assert Path(upload["folder_path"]) == saved == tmp_path / "tok"
    assert upload["allow_patterns"] == ["config.json", "model.safetensors"]
    assert sorted(upload["files"]) == ["config.json", "model.safetensors"]
    # what was uploaded, laid out as the Hub would serve it, loads back to the same ids
    pushed = tmp_path / "as-uploaded"
    pushed.mkdir()
    for name, data in upload["files"].items():
        (pushed / name).write_bytes(data)
    put_in_cache(cache, "vqtok-test/pushed", pushed, COMMIT_B)
    assert torch.equal(ImageTokenizer.from_pretrained("vqtok-test/pushed").encode(images()),
                       tokenizer.encode(images()))


@needs_hub
def test_push_defaults_to_the_folder_name_and_checks_the_repo_id_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    tokenizer = ImageTokenizer(tiny_model())
    tokenizer.save_pretrained(tmp_path / "my-tokenizer", push_to_hub=True)
    assert FakeApi.calls[1] == ("create_repo", {"repo_id": "my-tokenizer", "repo_type": "model",
                                                "private": None, "exist_ok": True})
    FakeApi.calls = []
    with pytest.raises(ValueError, match="repo_id must be a Hub repo id"):
        tokenizer.save_pretrained(tmp_path / "bad", push_to_hub=True, repo_id="a/b/c")
    assert not (tmp_path / "bad").exists() and FakeApi.calls == []


def test_without_huggingface_hub_local_paths_still_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    tokenizer = ImageTokenizer.from_pretrained(FMNIST)
    assert tokenizer.codebook_size == 1000
    model, _, _ = load_lm_dir(DECODER)
    assert model is not None
    with pytest.raises(ValueError, match=r"^org/name: no such local tokenizer directory; .*"
                                         r"pip install vqtok\[hub\]$"):
        ImageTokenizer.from_pretrained("org/name")
    with pytest.raises(MissingExtraError, match=r"pip install vqtok\[hub\]"):
        tokenizer.save_pretrained(tmp_path / "tok", push_to_hub=True, repo_id="org/name")
    assert not (tmp_path / "tok").exists()  # checked before anything was written
    tokenizer.save_pretrained(tmp_path / "tok")  # a plain save needs no Hub
    assert ImageTokenizer.from_pretrained(tmp_path / "tok").codebook_size == 1000


@needs_hub
def test_a_decoder_directory_is_pushed_as_it_is(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from vqtok.formats.hub import push_model_dir

    FakeApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    push_model_dir(DECODER, "vqtok-test/decoder", commit_message="decoder v1")
    upload = FakeApi.calls[-1][1]
    assert upload["commit_message"] == "decoder v1"
    assert upload["files"] == {p.name: p.read_bytes() for p in DECODER.iterdir()}
    FakeApi.calls = []
    with pytest.raises(ValueError, match=r"not a saved model directory \(missing \["):
        push_model_dir(tmp_path, "vqtok-test/empty")
    assert FakeApi.calls == []
