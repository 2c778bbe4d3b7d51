"""The FID Inception weights file: checked by its tensors and by the SHA-256 prefix its
published name carries, fetched only by `vqtok data inception` (here from file:// URLs
and local copies: no network), refused in one line when wrong."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from vqtok.cli import main
from vqtok.data.weights import cached_inception, fetch_inception, inception_cache_path
from vqtok.formats.inception_weights import (
    INCEPTION_SHA256_PREFIX,
    load_inception,
    read_inception_weights,
)
from vqtok.models.inception import random_inception_weights


@pytest.fixture(scope="module")
def random_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A weights file in the standard names and shapes, and its own SHA-256 prefix."""
    path = tmp_path_factory.mktemp("weights") / "random-inception.pth"
    torch.save(random_inception_weights(seed=2), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()[:8]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VQTOK_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_checksum_decides(random_file: tuple[Path, str]) -> None:
    path, prefix = random_file
    assert prefix != INCEPTION_SHA256_PREFIX
    net = load_inception(path, sha256_prefix=prefix)  # its own checksum: accepted
    assert float(net.Mixed_5b.branch1x1.conv.weight.abs().sum()) > 0
    with pytest.raises(ValueError) as err:  # the published checksum: refused
        read_inception_weights(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert f"does not start with {INCEPTION_SHA256_PREFIX}" in message
    assert "vqtok data inception" in message


def test_other_networks_and_non_state_dicts_are_refused_in_one_line(tmp_path: Path) -> None:
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    with pytest.raises(ValueError, match="not the FID Inception weights: missing") as err:
        read_inception_weights(other)
    assert "\n" not in str(err.value) and str(other) in str(err.value)
    shaped = tmp_path / "shaped.pth"
    weights = random_inception_weights()
    weights["Mixed_6b.branch7x7_2.conv.weight"] = torch.zeros(128, 128, 7, 1)
    torch.save(weights, shaped)
    with pytest.raises(ValueError, match=r"Mixed_6b.branch7x7_2.conv.weight has shape "
                                         r"\(128, 128, 7, 1\), expected \(128, 128, 1, 7\)"):
        read_inception_weights(shaped)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read as a PyTorch state dict"):
        read_inception_weights(text)


def test_fetch_from_a_url_checks_then_renames(cache: Path,
                                              random_file: tuple[Path, str]) -> None:
    path, prefix = random_file
    assert cached_inception() is None
    with pytest.raises(ValueError, match=f"does not start with {INCEPTION_SHA256_PREFIX}"):
        fetch_inception(url=path.as_uri())
    assert not inception_cache_path().exists()  # nothing half-written, no temporary left
    assert not inception_cache_path().parent.exists() or not any(
        inception_cache_path().parent.iterdir())
    fetched = fetch_inception(url=path.as_uri(), sha256_prefix=prefix)
    assert fetched == inception_cache_path() == cached_inception()
    assert fetched.read_bytes() == path.read_bytes()
    assert fetch_inception(url="file:///nowhere", sha256_prefix=prefix) == fetched  # kept


def test_cli_fetch_fails_in_one_line(cache: Path, random_file: tuple[Path, str],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = random_file
    assert main(["data", "inception", "--from", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vqtok data: error: ")
    assert f"does not start with {INCEPTION_SHA256_PREFIX}" in err[0]
    assert cached_inception() is None
    assert main(["data", "inception", "--from", str(path.parent / "missing.pth")]) == 2
    assert "no such file" in capsys.readouterr().err
