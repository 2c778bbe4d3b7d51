"""LlamaGen tokenizer files converted exactly (docs/interop.md#llamagen). LlamaGen's code
is not a package, so the fixtures are built here: taming's model code (the reference
package LlamaGen's modules follow, layer for layer) laid out as LlamaGen's VQ-8 and VQ-16
(attention in the lowest-resolution level and the middle), with an l2-normalised nearest
code search written here, saved under LlamaGen's published key names as
``{"model": state_dict}`` with its ``quantize.codebook_used`` buffer. A one-off run
against LlamaGen's own ``vq_model.py`` is recorded in
benchmarks/RESULTS_llamagen_parity.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.interop.references import taming_vqgan
from vqtok.cli import main
from vqtok.interop import ConversionError
from vqtok.interop.llamagen import load_llamagen
from vqtok.tokenizers import load_tokenizer

ARCHS = {"VQ-8": [1, 2, 2, 4], "VQ-16": [1, 1, 2, 2, 4]}
PIXEL_TOLERANCE = 1e-4
"""As for taming (tests/interop/test_taming.py): the same layers, attention computed
another way."""


def llamagen_reference(arch: str, ch: int = 32, z_channels: int = 16, codebook: int = 64,
                       dim: int = 8, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """A LlamaGen-layout VQGAN (random weights) and its file's content."""
    mult = ARCHS[arch]
    resolution = 64
    dd = {"double_z": False, "z_channels": z_channels, "resolution": resolution,
          "in_channels": 3, "out_ch": 3, "ch": ch, "ch_mult": mult, "num_res_blocks": 2,
          "attn_resolutions": [resolution // 2 ** (len(mult) - 1)], "dropout": 0.0}
    reference = taming_vqgan(dd, embed_dim=dim, n_embed=codebook, seed=seed)
    levels = len(mult)
    state = {}
    for key, value in reference.state_dict().items():
        key = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.conv_blocks.\1.res.", key)
        key = re.sub(r"^encoder\.down\.(\d+)\.", r"encoder.conv_blocks.\1.", key)
        key = re.sub(r"^decoder\.up\.(\d+)\.(block|attn|upsample)",
                     lambda m: f"decoder.conv_blocks.{levels - 1 - int(m.group(1))}."
                               f"{'res' if m.group(2) == 'block' else m.group(2)}", key)
        key = key.replace("mid.block_1.", "mid.0.").replace("mid.attn_1.", "mid.1.")
        key = key.replace("mid.block_2.", "mid.2.")
        state[key] = value
    state["quantize.codebook_used"] = torch.zeros(65536)
    return reference, {"model": state}


def reference_ids_and_pixels(reference: torch.nn.Module, x: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest l2-normalised code to each l2-normalised latent (LlamaGen's rule), and the
    pixels decoded from the normalised codes."""
    with torch.no_grad():
        h = reference.quant_conv(reference.encoder(x))  # (B, D, h, w)
        rows = F.normalize(h.permute(0, 2, 3, 1).reshape(-1, h.shape[1]), dim=1)
        codes = F.normalize(reference.quantize.embedding.weight, dim=1)
        ids = torch.cdist(rows, codes).argmin(dim=1).reshape(x.shape[0], *h.shape[2:])
        pixels = reference.decoder(reference.post_quant_conv(codes[ids].permute(0, 3, 1, 2)))
    return ids, pixels


@pytest.mark.parametrize("arch", ARCHS)
def test_ids_and_pixels_equal_the_reference(arch: str, tmp_path: Path) -> None:
    reference, content = llamagen_reference(arch, seed=len(ARCHS[arch]))
    torch.save(content, tmp_path / "vq.pt")
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    ids, pixels = reference_ids_and_pixels(reference, x)
    assert len(ids.unique()) > 4

    converted = load_llamagen(tmp_path / "vq.pt")
    assert converted.model.downsample_factor == 2 ** (len(ARCHS[arch]) - 1)
    with torch.no_grad():
        ours = converted.model.encode(x).indices
        decoded = converted.model.decode_indices(ours)
    assert torch.equal(ours, ids)
    assert (decoded - pixels).abs().max() < PIXEL_TOLERANCE
    assert converted.ignored == ["quantize.codebook_used (a training-time usage buffer)"]


def test_convert_command_and_arch_override(tmp_path: Path, capsys) -> None:
    reference, content = llamagen_reference("VQ-8")
    torch.save(content, tmp_path / "vq.pt")
    assert main(["convert", "--from", "llamagen", str(tmp_path / "vq.pt"),
                 str(tmp_path / "tok"), "--arch", "vq8"]) == 0
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ids, _ = reference_ids_and_pixels(reference, x)
    assert torch.equal(load_tokenizer(tmp_path / "tok").encode(x), ids)
    # the other architecture than the file holds: one line naming the first missing tensor
    capsys.readouterr()
    assert main(["convert", "--from", "llamagen", str(tmp_path / "vq.pt"),
                 str(tmp_path / "tok16"), "--arch", "VQ-16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "the source has no tensor encoder.conv_blocks.2.res.0.nin_shortcut.weight" in err
    assert not (tmp_path / "tok16").exists()


@pytest.mark.slow
def test_published_sizes(tmp_path: Path) -> None:
    """VQ-16 at the published sizes: ch 128, z_channels 256, 16,384 codes of dim 8."""
    reference, content = llamagen_reference("VQ-16", ch=128, z_channels=256, codebook=16384,
                                            dim=8, seed=16)
    torch.save(content, tmp_path / "vq_ds16_c2i.pt")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    ids, pixels = reference_ids_and_pixels(reference, x)
    model = load_llamagen(tmp_path / "vq_ds16_c2i.pt").model
    assert model.codebook_size == 16384 and model.dim == 8
    with torch.no_grad():
        ours = model.encode(x).indices
        assert torch.equal(ours, ids)
        assert (model.decode_indices(ours) - pixels).abs().max() < PIXEL_TOLERANCE


def test_a_file_that_is_not_llamagens_is_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ConversionError, match="not a LlamaGen tokenizer file"):
        load_llamagen(tmp_path / "other.pt")
