"""`vqtok lpips convert`: the two published artefacts (faked here with random tensors of
the right names and shapes) into one safetensors file, round trip and refusals."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vqtok.apps.lpips import convert_lpips
from vqtok.cli import main
from vqtok.models.lpips import LPIPS

# torchvision's vgg16().features: the indices of its 3x3 convolutions and their widths.
CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256),
         12: (256, 256), 14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512),
         24: (512, 512), 26: (512, 512), 28: (512, 512)}
HEAD_WIDTHS = [64, 128, 256, 512, 512]


def fake_torchvision_vgg16(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, (c_in, c_out) in CONVS.items():
        state[f"features.{i}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * 0.05
        state[f"features.{i}.bias"] = torch.randn(c_out, generator=g) * 0.01
    # the classifier is ignored (kept small here; torchvision's is 102M values)
    state["classifier.0.weight"] = torch.randn(16, 8, generator=g)
    state["classifier.6.bias"] = torch.randn(10, generator=g)
    return state


def fake_lpips_heads(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
            for i, c in enumerate(HEAD_WIDTHS)}


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("published")
    torch.save(fake_torchvision_vgg16(), folder / "vgg16.pth")
    torch.save(fake_lpips_heads(), folder / "vgg.pth")
    return folder / "vgg16.pth", folder / "vgg.pth"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip(published: tuple[Path, Path], tmp_path: Path) -> None:
    vgg, heads = published
    out = tmp_path / "lpips.safetensors"
    summary = convert_lpips(vgg, heads, out)
    assert str(out) in summary
    stored = load_file(out)
    vgg_state, head_state = fake_torchvision_vgg16(), fake_lpips_heads()
    expected = {k: v for k, v in vgg_state.items() if k.startswith("features.")}
    expected.update({f"heads.{i}.weight": head_state[f"lin{i}.model.1.weight"]
                     for i in range(5)})
    assert set(stored) == set(expected)
    for name, value in expected.items():
        assert stored[name].dtype == torch.float32
        assert torch.equal(stored[name], value), name
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["vgg_sha256"] == sha256(vgg) and meta["heads_sha256"] == sha256(heads)
    # the network from the file is the network built from the tensors directly
    g = torch.Generator().manual_seed(5)
    x, y = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    assert torch.equal(LPIPS.from_file(out)(x, y), LPIPS(expected)(x, y))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lpips.safetensors"]  # no temporaries


def test_an_existing_output_is_kept_unless_asked(published: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    vgg, heads = published
    out = tmp_path / "lpips.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        convert_lpips(vgg, heads, out)
    assert out.read_bytes() == b"precious"
    with pytest.raises(ValueError, match="also an input"):
        convert_lpips(vgg, heads, heads, overwrite=True)
    convert_lpips(vgg, heads, out, overwrite=True)
    assert set(load_file(out)) >= {"features.0.weight", "heads.4.weight"}


def refused(vgg: Path, heads: Path, out: Path, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        convert_lpips(vgg, heads, out)
    assert "\n" not in str(info.value)
    assert not out.exists() and not any(p.name.startswith(".") for p in out.parent.iterdir())


def test_wrong_files_are_refused_in_one_line(published: tuple[Path, Path],
                                             tmp_path: Path) -> None:
    vgg, heads = published
    out = tmp_path / "out" / "lpips.safetensors"
    out.parent.mkdir()
    bad = tmp_path / "bad.pth"

    refused(tmp_path / "absent.pth", heads, out, "VGG16 state dict .*absent.pth does not exist")
    bad.write_bytes(b"not a pickle")
    refused(bad, heads, out, "cannot be read as a PyTorch state dict")
    torch.save(torch.zeros(3), bad)
    refused(vgg, bad, out, "not a state dict")

    state = fake_torchvision_vgg16()
    del state["features.28.bias"]
    torch.save(state, bad)
    refused(bad, heads, out, "not torchvision's vgg16.*missing features.28.bias")
    state = fake_torchvision_vgg16()
    state["features.1.weight"] = torch.ones(64)  # vgg16_bn puts batch norms there
    torch.save(state, bad)
    refused(bad, heads, out, "unexpected features.1.weight")
    state = fake_torchvision_vgg16()
    state["features.5.weight"] = torch.zeros(128, 64, 1, 1)
    torch.save(state, bad)
    refused(bad, heads, out, r"VGG16 state dict .*features.5.weight has shape \(128, 64, 1, 1\)")

    lin = fake_lpips_heads()
    lin["lin5.model.1.weight"] = torch.rand(1, 512, 1, 1)  # the SqueezeNet heads have 7
    torch.save(lin, bad)
    refused(vgg, bad, out, "not the lpips package's VGG heads.*unexpected lin5")
    lin = fake_lpips_heads()
    lin["lin2.model.1.weight"] = torch.rand(1, 384, 1, 1)  # AlexNet's third tap
    torch.save(lin, bad)
    refused(vgg, bad, out, r"LPIPS heads file .*lin2.model.1.weight has shape \(1, 384, 1, 1\)")
    lin = fake_lpips_heads()
    lin["lin0.model.1.weight"] = -lin["lin0.model.1.weight"]
    torch.save(lin, bad)
    refused(vgg, bad, out, "negative")


def test_the_command(published: tuple[Path, Path], tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    vgg, heads = published
    out = tmp_path / "lpips.safetensors"
    args = ["lpips", "convert", "--vgg", str(vgg), "--heads", str(heads), "--out", str(out)]
    assert main(args) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqtok lpips convert: error: ") and err.count("\n") == 1
    assert "--overwrite" in err and out.read_bytes() == before
    assert main([*args, "--force"]) == 0
    assert main([*args[:-1], str(tmp_path / "b.safetensors"), "--heads", str(vgg)]) == 2
    err = capsys.readouterr().err
    assert "LPIPS heads file" in err and "Traceback" not in err
    assert not (tmp_path / "b.safetensors").exists()


def test_the_installed_command_fails_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vqtok.cli", "lpips", "convert", "--vgg",
         str(tmp_path / "absent.pth"), "--heads", str(tmp_path / "vgg.pth"), "--out",
         str(tmp_path / "lpips.safetensors")],
        check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"vqtok lpips convert: error: VGG16 state dict {tmp_path / 'absent.pth'} does not exist"]
