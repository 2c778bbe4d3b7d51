"""The data cache: where data sets live, `vqtok data fashion-mnist --from DIR`, and the
one-line error of a config whose data set is missing."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.training.test_data import (  # noqa: F401 - http_dir is a fixture
    FILE_NAMES,
    http_dir,
    idx_bytes,
    write_fashion_files,
)
from vqtok.cli import main
from vqtok.data import FashionMNIST, data_home, dataset_dir
from vqtok.data.fashion_mnist import OFFICIAL_MD5

ROOT = Path(__file__).resolve().parents[2]
ALL_NAMES = [f"{name}.gz" for pair in FILE_NAMES.values() for name in pair]


def test_data_home_is_vqtok_data_else_the_platform_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VQTOK_DATA", str(tmp_path / "mine"))
    assert data_home() == tmp_path / "mine"
    assert dataset_dir("fashion-mnist") == tmp_path / "mine" / "fashion-mnist"
    monkeypatch.delenv("VQTOK_DATA")
    if sys.platform.startswith("linux"):  # the XDG cache directory, by the XDG spec
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert data_home() == tmp_path / "xdg" / "vqtok"


def test_copy_from_a_folder_verifies_and_loads(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("VQTOK_DATA", str(tmp_path / "cache"))
    source = tmp_path / "source"
    data = write_fashion_files(source, n_train=12, n_test=5)
    assert main(["data", "fashion-mnist", "--from", str(source), "--quiet"]) == 0
    out = capsys.readouterr().out
    target = tmp_path / "cache" / "fashion-mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(ALL_NAMES)  # no temp files
    for name in ALL_NAMES:
        assert (target / name).read_bytes() == (source / name).read_bytes()
        assert f"{name}: not the official release" in out  # our files are not Zalando's
    train = FashionMNIST(None, "train")  # the default root is the cache
    np.testing.assert_array_equal(train.labels.numpy(), data["train"][1])


def test_copy_recognises_the_official_files_by_their_published_md5(
        tmp_path: Path, monkeypatch) -> None:
    from vqtok.data.fashion_mnist import copy_from

    source = tmp_path / "source"
    write_fashion_files(source, n_train=3, n_test=2)
    sums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in source.iterdir()}
    monkeypatch.setitem(OFFICIAL_MD5, "train-labels-idx1-ubyte.gz",
                        sums["train-labels-idx1-ubyte.gz"])
    _, notes = copy_from(source, tmp_path / "target")
    assert "train-labels-idx1-ubyte.gz: the official release" in notes
    assert sum("not the official release" in note for note in notes) == 3


def test_copy_refuses_a_corrupt_file_and_keeps_nothing_of_it(tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    monkeypatch.setenv("VQTOK_DATA", str(tmp_path / "cache"))
    source = tmp_path / "source"
    write_fashion_files(source, n_train=12, n_test=5)
    labels = source / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05" + bytes([1, 2, 3])))
    assert main(["data", "fashion-mnist", "--from", str(source), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte.gz" in err and len(err.strip().splitlines()) == 1
    target = tmp_path / "cache" / "fashion-mnist"
    assert not (target / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".")]


def test_copy_from_a_folder_without_the_files(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["data", "fashion-mnist", "--from", str(tmp_path / "empty"),
                 "--root", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train-images-idx3-ubyte" in err


def test_fit_without_the_data_set_is_one_line_and_leaves_no_run(tmp_path: Path) -> None:
    vqtok = Path(sys.executable).with_name("vqtok")
    env = {"VQTOK_DATA": str(tmp_path / "empty-cache"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [str(vqtok), "fit", "--config", str(ROOT / "experiments" / "fmnist_fsq.yaml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, done.stderr  # besides Lightning's "Seed set to 0"
    assert errors[0].startswith("vqtok fit: error: Fashion-MNIST not found in ")
    assert "vqtok data fashion-mnist" in errors[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()


def cache_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_copy_keeps_the_previous_cache_whole(tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    monkeypatch.setenv("VQTOK_DATA", str(tmp_path / "cache"))
    write_fashion_files(tmp_path / "good", n_train=12, n_test=5, seed=0)
    assert main(["data", "fashion-mnist", "--from", str(tmp_path / "good"), "--quiet"]) == 0
    target = tmp_path / "cache" / "fashion-mnist"
    before = cache_files(target)
    bad = tmp_path / "bad"
    write_fashion_files(bad, n_train=7, n_test=3, seed=1)  # a valid first file, then
    labels = bad / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-8])  # a cut-off one
    capsys.readouterr()
    assert main(["data", "fashion-mnist", "--from", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(labels) in err  # the user's file, by its path
    assert ".tmp-" not in err
    assert cache_files(target) == before  # not one file replaced
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["fashion-mnist"]


def test_images_and_labels_must_be_as_many(tmp_path: Path, capsys) -> None:
    source = tmp_path / "source"
    write_fashion_files(source, n_train=100, n_test=5)
    labels = np.zeros(60_000, dtype=np.uint8)  # the full training set's labels
    (source / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    assert main(["data", "fashion-mnist", "--from", str(source), "--root",
                 str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "100 train images but" in err and "60,000 labels" in err
    assert str(source / "train-labels-idx1-ubyte.gz") in err
    assert not list((tmp_path / "out").iterdir())


def test_a_root_is_replaced_whole_so_it_may_hold_only_fashion_mnist(tmp_path: Path,
                                                                    capsys) -> None:
    source, root = tmp_path / "source", tmp_path / "mine"
    write_fashion_files(source, n_train=3, n_test=2)
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    assert main(["data", "fashion-mnist", "--from", str(source), "--root", str(root)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert cache_files(root) == {"notes.txt": b"keep me"}
    # a root that holds the source would delete it when replaced
    inner = root / "fashion-mnist"
    write_fashion_files(inner / "from", n_train=3, n_test=2)
    assert main(["data", "fashion-mnist", "--from", str(inner / "from"), "--root",
                 str(inner)]) == 2
    assert "holds" in capsys.readouterr().err
    assert len(list((inner / "from").iterdir())) == 4


def test_a_download_is_checked_with_the_files_it_keeps(http_dir, tmp_path: Path  # noqa: F811
                                                       ) -> None:
    from vqtok.data.fashion_mnist import download

    served, url = http_dir
    write_fashion_files(served, n_train=12, n_test=5)
    root = tmp_path / "fm"
    write_fashion_files(root, n_train=12, n_test=5)
    for name in ("t10k-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (root / name).unlink()
    labels = np.zeros(7, dtype=np.uint8)  # 7 training labels for the 12 images kept
    (served / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    before = cache_files(root)
    with pytest.raises(ValueError, match=r"fm/train-images-idx3-ubyte.gz holds 12 train images "
                                         r"but http://.*/train-labels-idx1-ubyte.gz holds 7"):
        download(root, base_url=url, timeout=10, checksums=None)
    assert cache_files(root) == before  # nothing fetched is kept, nothing kept is lost
    write_fashion_files(served, n_train=12, n_test=5)  # the matching files
    download(root, base_url=url, timeout=10, checksums=None)
    assert cache_files(root) == cache_files(served)
