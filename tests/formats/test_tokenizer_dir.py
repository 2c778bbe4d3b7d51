"""The on-disk tokenizer format: round trip, no pickle, every bad directory, atomic saves."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import vqtok.formats.atomic
from tests import helpers
from vqtok.formats import model_dir
from vqtok.formats.tokenizer_dir import (
    TokenizerFormatError,
    load_tokenizer_dir,
    save_tokenizer_dir,
)
from vqtok.models import VQAutoencoder
from vqtok.quantizers import FSQ, SimVQ, VectorQuantizer


def tiny_model(quantizer: torch.nn.Module | None = None, seed: int = 0,
               in_channels: int = 3) -> VQAutoencoder:
    return helpers.tiny_model(quantizer, seed, in_channels).eval()


def outputs(model: VQAutoencoder, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(2, model.in_channels, 16, 16, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        out = model(x * 2 - 1)
    return out.quant.indices, out.x_hat


@pytest.fixture
def saved(tmp_path: Path) -> tuple[VQAutoencoder, Path]:
    model = tiny_model()
    return model, save_tokenizer_dir(model, tmp_path / "tok")


# ---- round trip -----------------------------------------------------------------------


@pytest.mark.parametrize("make_quantizer", [
    lambda: FSQ(levels=[8, 5, 5, 5]),
    lambda: VectorQuantizer(64, 4, init="normal"),
    lambda: SimVQ(64, 4),
], ids=["fsq", "vq", "simvq"])
def test_round_trip_rebuilds_identical_model(tmp_path: Path, make_quantizer) -> None:
    model = tiny_model(make_quantizer())
    with torch.no_grad():  # move every parameter off its init so the weights must load
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_tokenizer_dir(model, tmp_path / "tok")
    loaded, config = load_tokenizer_dir(tmp_path / "tok")
    assert not loaded.training
    assert type(loaded.quantizer) is type(model.quantizer)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    ids, x_hat = outputs(model)
    ids2, x_hat2 = outputs(loaded)
    assert torch.equal(ids, ids2) and torch.equal(x_hat, x_hat2)
    assert config["codebook_size"] == model.codebook_size


def test_config_content(saved: tuple[VQAutoencoder, Path]) -> None:
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert config["format"] == "vqtok.tokenizer" and config["format_version"] == 1
    assert isinstance(config["vqtok_version"], str)
    assert config["image"] == {"channels": 3, "downsample_factor": 4, "min_size": 4}
    assert config["normalization"] == {"mean": 0.5, "std": 0.5}
    assert config["codebook_size"] == 8 * 5 * 5 * 5
    assert config["quantizer"] == {"class_path": "vqtok.quantizers.fsq.FSQ",
                                   "init_args": {"levels": [8, 5, 5, 5], "codebook_size": None,
                                                 "dim": None}}
    assert config["encoder"]["class_path"] == "vqtok.models.convnet.Encoder"
    assert config["encoder"]["init_args"] == {"in_channels": 3, "channels": 8,
                                              "channel_mult": [1, 2, 2], "num_res_blocks": 1,
                                              "dim": 4, "attention": False, "num_groups": 4,
                                              "norm": "group"}
    assert config["decoder"]["init_args"]["out_channels"] == 3
    assert "extra" not in config


def test_extra_metadata_is_stored_and_must_be_json(tmp_path: Path) -> None:
    model = tiny_model()
    save_tokenizer_dir(model, tmp_path / "tok", extra={"steps": 10, "run": "a"})
    _, config = load_tokenizer_dir(tmp_path / "tok")
    assert config["extra"] == {"steps": 10, "run": "a"}
    with pytest.raises(ValueError, match="JSON"):
        save_tokenizer_dir(model, tmp_path / "tok2", extra={"bad": torch.zeros(1)})
    assert not (tmp_path / "tok2").exists()


def test_loading_never_unpickles(saved: tuple[VQAutoencoder, Path], monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle/torch.load called while loading a tokenizer")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    model, path = saved
    loaded, _ = load_tokenizer_dir(path)
    assert torch.equal(outputs(model)[1], outputs(loaded)[1])


# ---- bad directories ------------------------------------------------------------------


def edit_config(path: Path, change) -> None:
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))


def expect_error(path: Path, file_name: str, match: str) -> None:
    with pytest.raises(TokenizerFormatError, match=match) as info:
        load_tokenizer_dir(path)
    assert file_name in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_directory_and_files(saved: tuple[VQAutoencoder, Path], tmp_path: Path) -> None:
    _, path = saved
    expect_error(tmp_path / "nowhere", "nowhere", "not a tokenizer directory")
    (path / "model.safetensors").unlink()
    expect_error(path, "model.safetensors", "missing")
    (path / "config.json").unlink()
    expect_error(path, "config.json", "missing")


@pytest.mark.parametrize("text", ["", "{\"format\": \"vqtok.tok", "[1, 2]", "\xff\xfe",
                                  '{"format": NaN}'])
def test_corrupt_config(saved: tuple[VQAutoencoder, Path], text: str) -> None:
    _, path = saved
    (path / "config.json").write_bytes(text.encode("latin-1"))
    expect_error(path, "config.json", "JSON|object|format")


@pytest.mark.parametrize("change, match", [
    (lambda c: c.update(format_version=2), "format_version 2"),
    (lambda c: c.update(format_version="1"), "format_version"),
    (lambda c: c.update(format="other"), "format must be 'vqtok.tokenizer'"),
    (lambda c: c.update(surprise=1), r"unknown keys \['surprise'\]"),
    (lambda c: c["image"].update(size=3), r"unknown keys \['size'\] in image"),
    (lambda c: c["quantizer"].update(extra_key=1), r"unknown keys \['extra_key'\] in quantizer"),
    (lambda c: c.pop("decoder"), r"missing keys \['decoder'\]"),
    (lambda c: c["normalization"].update(std=0), r"normalization.std must be a finite number > 0, got 0"),
    (lambda c: c["image"].update(min_size=0), r"image.min_size must be an integer >= 1, got 0"),
    (lambda c: c["quantizer"].update(class_path="os.system"), "unknown class_path 'os.system'"),
    (lambda c: c["encoder"]["init_args"].update(depth=3), r"unknown init_args \['depth'\]"),
    (lambda c: c["encoder"]["init_args"].update(channels=-1), "cannot build the encoder"),
    (lambda c: c["image"].update(channels=1), "image.channels is 1"),
    (lambda c: c.update(codebook_size=7), "codebook_size is 7"),
    # JSON's true is not a count, a string is not a level, and sizes are capped before
    # anything is allocated
    (lambda c: c["encoder"]["init_args"].update(channels=True),
     r"init_args.channels of vqtok.models.convnet.Encoder must be int, got True"),
    (lambda c: c["quantizer"]["init_args"].update(levels=[8, "5", 5, 5]),
     r"init_args.levels of .*FSQ must be list\[int\] \| None"),
    (lambda c: c["decoder"]["init_args"].update(channels=10**7), "channels must be an int in"),
    (lambda c: c.update(weights_sha256="abc"), "weights_sha256 must be a SHA-256 in hex"),
], ids=["version", "version-str", "format", "unknown-key", "unknown-image-key",
        "unknown-spec-key", "missing-key", "std", "min-size", "class-path", "init-arg",
        "bad-init-value", "channels", "codebook-size", "bool-is-not-int", "str-level",
        "huge-width", "bad-checksum-text"])
def test_invalid_config(saved: tuple[VQAutoencoder, Path], change, match: str) -> None:
    _, path = saved
    edit_config(path, change)
    expect_error(path, "config.json", match)


def test_duplicate_json_keys_rejected(saved: tuple[VQAutoencoder, Path]) -> None:
    _, path = saved
    text = (path / "config.json").read_text()
    (path / "config.json").write_text(text.replace('"format": ', '"format": "x", "format": ', 1))
    expect_error(path, "config.json", "duplicate keys")


def forget_checksum(path: Path) -> None:
    """A directory written before config.json recorded the weights' SHA-256: the checks
    behind the checksum must still catch what they catch."""
    edit_config(path, lambda c: c.pop("weights_sha256"))


def test_config_records_the_weights_checksum(saved: tuple[VQAutoencoder, Path]) -> None:
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert config["weights_sha256"] == digest


def test_flipped_bytes_are_caught_by_the_checksum(saved: tuple[VQAutoencoder, Path],
                                                  tmp_path: Path) -> None:
    model, path = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])  # the end of the last tensor
    (path / "model.safetensors").write_bytes(bytes(data))
    expect_error(path, "model.safetensors", "SHA-256 is not the weights_sha256")
    # Without the checksum the same file loads, silently, and changes the model's output:
    # the failure the checksum exists for.
    forget_checksum(path)
    loaded, _ = load_tokenizer_dir(path)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert not torch.equal(model.decode_indices(model.encode(x).indices),
                               loaded.decode_indices(loaded.encode(x).indices))


@pytest.mark.parametrize("keep", [lambda n: 0, lambda n: 7, lambda n: 200, lambda n: n // 2,
                                  lambda n: n - 3], ids=["empty", "7", "200", "half", "n-3"])
def test_truncated_or_empty_weights(saved: tuple[VQAutoencoder, Path], keep) -> None:
    _, path = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:keep(len(data))])
    expect_error(path, "model.safetensors", "SHA-256")
    forget_checksum(path)
    expect_error(path, "model.safetensors", "not a readable safetensors file")


def test_foreign_safetensors(saved: tuple[VQAutoencoder, Path]) -> None:
    model, path = saved
    forget_checksum(path)
    # the right tensors, but written by someone else (no vqtok marker)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(path / "model.safetensors"))
    expect_error(path, "model.safetensors", "not written by vqtok")


def _write_marked(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"),
              metadata={"vqtok.format": "vqtok.tokenizer", "format": "pt"})


def test_missing_unexpected_and_misshaped_weights(saved: tuple[VQAutoencoder, Path]) -> None:
    model, path = saved
    forget_checksum(path)
    state = dict(model.state_dict())
    first = next(iter(state))

    missing = {k: v for k, v in state.items() if k != first}
    _write_marked(path, missing)
    expect_error(path, "model.safetensors", f"the file has no tensor {first}")

    _write_marked(path, {**state, "encoder.surplus": torch.zeros(2)})
    expect_error(path, "model.safetensors", "holds 1 tensors the tokenizer has not, such as "
                                            "encoder.surplus")

    _write_marked(path, {**state, first: torch.zeros(3, 3)})
    expect_error(path, "model.safetensors", rf"{first} is \[3, 3\] in the file .*size mismatch")

    _write_marked(path, state)  # the same tensors with the marker load fine
    loaded, _ = load_tokenizer_dir(path)
    assert torch.equal(outputs(model)[1], outputs(loaded)[1])


# ---- atomic saves ---------------------------------------------------------------------


def test_failed_save_keeps_old_tokenizer_and_leaves_no_temp(
    saved: tuple[VQAutoencoder, Path], monkeypatch
) -> None:
    old_model, path = saved
    new_model = tiny_model(seed=5)

    def crash(model: VQAutoencoder, file: str, **kwargs) -> None:
        Path(file).write_bytes(b"half a safetensors file")
        raise OSError("disk full")

    monkeypatch.setattr(model_dir, "save_model", crash)
    with pytest.raises(OSError, match="disk full"):
        save_tokenizer_dir(new_model, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["tok"]
    loaded, _ = load_tokenizer_dir(path)
    assert torch.equal(outputs(loaded)[1], outputs(old_model)[1])


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_save_replaces_existing_tokenizer(
    saved: tuple[VQAutoencoder, Path], monkeypatch, exchange: bool
) -> None:
    old_model, path = saved
    if not exchange:
        monkeypatch.setattr(vqtok.formats.atomic, "_exchange", lambda a, b: False)
    new_model = tiny_model(seed=5)
    save_tokenizer_dir(new_model, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["tok"]
    loaded, _ = load_tokenizer_dir(path)
    assert torch.equal(outputs(loaded)[1], outputs(new_model)[1])
    assert not torch.equal(outputs(loaded)[1], outputs(old_model)[1])


def test_save_refuses_to_replace_foreign_directory(tmp_path: Path) -> None:
    target = tmp_path / "work"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"notes.txt.*refusing to replace"):
        save_tokenizer_dir(tiny_model(), target)
    assert (target / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        save_tokenizer_dir(tiny_model(), tmp_path / "file")


def test_save_into_empty_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    model = tiny_model()
    save_tokenizer_dir(model, tmp_path / "tok")
    loaded, _ = load_tokenizer_dir(tmp_path / "tok")
    assert torch.equal(outputs(loaded)[0], outputs(model)[0])


def test_saved_tokenizer_has_the_usual_permissions(tmp_path: Path) -> None:
    # tempfile makes 0700/0600 entries; a tokenizer shared by a team must follow the umask.
    import os
    import stat

    mask = os.umask(0o022)
    try:
        path = save_tokenizer_dir(tiny_model(seed=1), tmp_path / "tok")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    for name in ("config.json", "model.safetensors"):
        assert stat.S_IMODE((path / name).stat().st_mode) == 0o644
