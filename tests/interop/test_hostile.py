"""Sources that must not convert (docs/interop.md#safety): each is refused by ``vqtok
convert`` in one line naming the problem and the file, exit status 2, nothing written,
and nothing a pickle names is ever run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.formats.test_hub import COMMIT_A, put_in_cache
from tests.interop.references import taming_vqgan, write_taming_logdir
from tests.interop.test_diffusers import diffusers_vqmodel
from vqtok.cli import main
from vqtok.formats.tokenizer_dir import fingerprint


class RunsACommand:
    """Unpickling this would run ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], out: Path) -> str:
    """The one line ``vqtok`` printed for ``argv``, after checking it refused and wrote
    nothing."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("vqtok convert: error: ")
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return err


@pytest.mark.parametrize("source", ["taming", "llamagen", "seed-voken"])
def test_a_pickle_naming_a_foreign_global_is_refused_and_never_run(
        source: str, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "ran"
    if source == "taming":
        dd = {"double_z": False, "z_channels": 8, "resolution": 32, "in_channels": 3,
              "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
              "attn_resolutions": [], "dropout": 0.0}
        logdir = write_taming_logdir(tmp_path / "log", taming_vqgan(dd, 4, 16, 0), dd, 4, 16)
        ckpt = torch.load(logdir / "ckpts" / "last.ckpt", weights_only=False)
        ckpt["hyper_parameters"] = RunsACommand(marker)
        torch.save(ckpt, logdir / "ckpts" / "last.ckpt")
        argv, named = [str(logdir)], logdir / "ckpts" / "last.ckpt"
    elif source == "seed-voken":
        torch.save({"state_dict": {}, "hyper_parameters": RunsACommand(marker)},
                   tmp_path / "ibq.ckpt")
        argv, named = [str(tmp_path / "ibq.ckpt")], tmp_path / "ibq.ckpt"
    else:
        torch.save({"model": {}, "args": RunsACommand(marker)}, tmp_path / "vq.pt")
        argv, named = [str(tmp_path / "vq.pt")], tmp_path / "vq.pt"
    out = tmp_path / "tok"
    err = refused(["convert", "--from", source, *argv, str(out)], capsys, out)
    assert f"{named}: refused: the pickle names the global posix.system" in err
    assert not marker.exists()


def test_a_legacy_format_pickle_is_refused_too(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "ran"
    torch.save({"model": {}, "args": RunsACommand(marker)}, tmp_path / "vq.pt",
               _use_new_zipfile_serialization=False)
    out = tmp_path / "tok"
    err = refused(["convert", "--from", "llamagen", str(tmp_path / "vq.pt"), str(out)], capsys,
                  out)
    assert "refused: the pickle names the global posix.system" in err
    assert not marker.exists()


def test_truncated_safetensors(tmp_path: Path, capsys) -> None:
    diffusers_vqmodel(4, False, 64, seed=1).save_pretrained(tmp_path / "vq")
    weights = tmp_path / "vq" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "tok"
    err = refused(["convert", "--from", "diffusers", str(tmp_path / "vq"), str(out)], capsys, out)
    assert f"{weights}: not a readable safetensors file" in err


def test_truncated_checkpoint(tmp_path: Path, capsys) -> None:
    torch.save({"model": {"a": torch.zeros(1000)}}, tmp_path / "vq.pt")
    (tmp_path / "vq.pt").write_bytes((tmp_path / "vq.pt").read_bytes()[:500])
    out = tmp_path / "tok"
    err = refused(["convert", "--from", "llamagen", str(tmp_path / "vq.pt"), str(out)], capsys,
                  out)
    assert f"{tmp_path / 'vq.pt'}: not a readable torch checkpoint" in err


def test_a_config_that_disagrees_with_the_weights(tmp_path: Path, capsys) -> None:
    diffusers_vqmodel(4, False, 64, seed=1).save_pretrained(tmp_path / "vq")
    config_path = tmp_path / "vq" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "layers_per_block": 3}))
    out = tmp_path / "tok"
    err = refused(["convert", "--from", "diffusers", str(tmp_path / "vq"), str(out)], capsys, out)
    assert "the source has no tensor encoder.down_blocks.0.resnets.2.norm1.weight" in err
    config_path.write_text(json.dumps({**config, "num_vq_embeddings": 65}))
    err = refused(["convert", "--from", "diffusers", str(tmp_path / "vq"), str(out)], capsys, out)
    assert "quantize.embedding.weight is [64, 4] but the declared architecture needs [65, 4]" in err


def test_a_hub_repo_that_is_not_a_vqmodel(tmp_path: Path, cache: Path, capsys) -> None:
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=[32], norm_num_groups=16).save_pretrained(tmp_path / "kl")
    put_in_cache(cache, "org/kl", tmp_path / "kl", COMMIT_A, subfolder="vae")
    out = tmp_path / "tok"
    err = refused(["convert", "--from", "diffusers", "org/kl", "--subfolder", "vae", str(out)],
                  capsys, out)
    assert "not a diffusers VQModel (_class_name is 'AutoencoderKL')" in err


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path: Path, capsys) -> None:
    diffusers_vqmodel(4, False, 64, seed=1).save_pretrained(tmp_path / "vq")
    argv = ["convert", "--from", "diffusers", str(tmp_path / "vq"), str(tmp_path / "tok")]
    assert main(argv) == 0
    written = fingerprint(tmp_path / "tok")  # config and tensors, not the file's bytes
    capsys.readouterr()
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert fingerprint(tmp_path / "tok") == written
    # the source itself is never an output, --overwrite or not
    assert main(["convert", "--from", "diffusers", str(tmp_path / "vq"), str(tmp_path / "vq"),
                 "--overwrite"]) == 2
    assert (tmp_path / "vq" / "diffusion_pytorch_model.safetensors").is_file()
