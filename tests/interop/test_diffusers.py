"""diffusers ``VQModel`` folders converted exactly (docs/interop.md#diffusers): against
diffusers itself, with random weights in every layer, in f8 and f16, with and without
attention, with 64 and 1,024 codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, VQModel

from tests.formats.test_hub import COMMIT_A, put_in_cache
from tests.interop.references import randomize
from vqtok.cli import main
from vqtok.interop import ConversionError
from vqtok.interop.diffusers import load_diffusers
from vqtok.tokenizers import ImageTokenizer, load_tokenizer

PIXEL_TOLERANCE = 1e-4
"""Decoded pixels (values in about [-4, 4] with random weights) against diffusers'
``decode``. The largest difference measured over these configs is 1.2e-5, and as large
without attention, where the encoders' latents are bit-identical: diffusers decodes
``z + (q - z)``, its quantizer's straight-through output, where vqtok decodes the code ``q``
itself; the two differ by the float32 rounding of that sum, which the decoder carries to
the pixels."""


CONFIGS = {
    # name: (levels, attention at the lowest level and in the middle, codebook size)
    "f8-attention-K64": (4, True, 64),
    "f8-plain-K1024": (4, False, 1024),
    "f16-attention-K1024": (5, True, 1024),
    "f16-plain-K64": (5, False, 64),
}


def diffusers_vqmodel(levels: int, attention: bool, codebook: int, seed: int) -> VQModel:
    """A small ``VQModel`` as diffusers builds it, random in every parameter."""
    widths = [32, 32, 64, 64, 64][:levels]
    down = ["AttnDownEncoderBlock2D" if attention and i == levels - 1 else "DownEncoderBlock2D"
            for i in range(levels)]
    up = ["AttnUpDecoderBlock2D" if attention and i == 0 else "UpDecoderBlock2D"
          for i in range(levels)]
    model = VQModel(block_out_channels=widths, down_block_types=down, up_block_types=up,
                    layers_per_block=2, latent_channels=8, num_vq_embeddings=codebook,
                    vq_embed_dim=4, norm_num_groups=16, mid_block_add_attention=attention)
    return randomize(model, seed)


def diffusers_reference(model: VQModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' ids, ``model.quantize(model.encode(x).latents)`` indices, and its pixels,
    ``model.decode(latents)``."""
    with torch.no_grad():
        latents = model.encode(x).latents
        _, _, (_, _, ids) = model.quantize(latents)
        pixels = model.decode(latents).sample
    return ids.reshape(x.shape[0], *latents.shape[2:]), pixels


@pytest.mark.parametrize("name", CONFIGS)
def test_ids_and_pixels_equal_diffusers(name: str, tmp_path: Path) -> None:
    levels, attention, codebook = CONFIGS[name]
    reference = diffusers_vqmodel(levels, attention, codebook, seed=levels + codebook)
    reference.save_pretrained(tmp_path / "vq")
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ids, pixels = diffusers_reference(reference, x)
    assert len(ids.unique()) > 4  # the comparison covers many codes, not one

    model = load_diffusers(tmp_path / "vq").model
    with torch.no_grad():
        ours = model.encode(x).indices
        decoded = model.decode_indices(ours)
    assert torch.equal(ours, ids)
    assert (decoded - pixels).abs().max() < PIXEL_TOLERANCE

    tokenizer = ImageTokenizer.from_pretrained(tmp_path / "vq")  # the folder, as it is
    assert torch.equal(tokenizer.encode(x), ids)


def test_converted_directory_is_an_ordinary_tokenizer(tmp_path: Path, capsys) -> None:
    reference = diffusers_vqmodel(4, True, 64, seed=5)
    reference.save_pretrained(tmp_path / "vq")
    assert main(["convert", "--from", "diffusers", str(tmp_path / "vq"),
                 str(tmp_path / "tok")]) == 0
    config = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert config["normalization"] == {"mean": 0.5, "std": 0.5}  # pixels to [-1, 1]
    assert config["encoder"]["class_path"] == "vqtok.models.vqgan.VQGANEncoder"
    assert "scaling_factor=0.18215" in " ".join(config["extra"]["converted_from"]["ignored"])
    tokenizer = load_tokenizer(tmp_path / "tok")
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    ids, _ = diffusers_reference(reference, x)
    assert torch.equal(tokenizer.encode(x), ids)


def test_hub_repo_with_subfolder(tmp_path: Path, cache: Path) -> None:
    """A Hub repo whose VQModel lies in ``vqvae/`` (as in aMUSEd's), from the offline cache
    through the Hub code path every tokenizer directory takes."""
    reference = diffusers_vqmodel(4, False, 64, seed=7)
    reference.save_pretrained(tmp_path / "vq")
    put_in_cache(cache, "org/pipeline", tmp_path / "vq", COMMIT_A, subfolder="vqvae")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ids, _ = diffusers_reference(reference, x)
    tokenizer = ImageTokenizer.from_pretrained("org/pipeline", subfolder="vqvae")
    assert torch.equal(tokenizer.encode(x), ids)
    assert main(["convert", "--from", "diffusers", "org/pipeline", "--subfolder", "vqvae",
                 str(tmp_path / "tok")]) == 0


def test_other_model_classes_are_refused(tmp_path: Path, capsys) -> None:
    AutoencoderKL(block_out_channels=[32], norm_num_groups=16).save_pretrained(tmp_path / "kl")
    assert main(["convert", "--from", "diffusers", str(tmp_path / "kl"),
                 str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a diffusers VQModel (_class_name is 'AutoencoderKL')" in err
    assert not (tmp_path / "tok").exists()
    with pytest.raises(ConversionError, match="not a diffusers VQModel"):
        ImageTokenizer.from_pretrained(tmp_path / "kl")


def test_movq_spatial_norm_is_refused(tmp_path: Path) -> None:
    diffusers_vqmodel(4, False, 64, seed=3).save_pretrained(tmp_path / "vq")
    config = json.loads((tmp_path / "vq" / "config.json").read_text())
    (tmp_path / "vq" / "config.json").write_text(json.dumps({**config, "norm_type": "spatial"}))
    with pytest.raises(ConversionError, match="norm_type 'spatial'"):
        load_diffusers(tmp_path / "vq")

