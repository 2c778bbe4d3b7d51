"""taming-transformers VQGAN log folders converted exactly (docs/interop.md#taming):
against taming's own ``model.py`` and ``quantize.py`` (its PyPI package), with random
weights in every layer, from a log folder laid out as taming publishes one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.interop.references import (
    taming_ids_and_pixels,
    taming_module,
    taming_vqgan,
    write_taming_logdir,
)
from vqtok.cli import main
from vqtok.interop import ConversionError
from vqtok.interop.taming import load_taming
from vqtok.quantizers import VectorQuantizer
from vqtok.tokenizers import load_tokenizer

PIXEL_TOLERANCE = 1e-4
"""Pixels decoded from the same ids (values in about [-4, 4]): the convolutions and norms
are the same operations in the same order; the attention differs (taming: bmm and
softmax, vqtok: ``scaled_dot_product_attention``, with the three 1x1 projections fused),
a float32 rounding difference that the decoder carries to the pixels. The largest
difference measured over these configs is 1.1e-5."""


def ddconfig(ch_mult: list[int], attn_resolutions: list[int], num_res_blocks: int = 2) -> dict:
    return {"double_z": False, "z_channels": 8, "resolution": 64, "in_channels": 3,
            "out_ch": 3, "ch": 32, "ch_mult": ch_mult, "num_res_blocks": num_res_blocks,
            "attn_resolutions": attn_resolutions, "dropout": 0.0}


CONFIGS = {
    # name: (ddconfig, codebook size); attention at the 8 x 8 level of a 64 x 64 model
    "f8-attention-K64": (ddconfig([1, 2, 2, 2], [8]), 64),
    "f8-plain-K1024": (ddconfig([1, 2, 2, 2], [], num_res_blocks=1), 1024),
    "f16-attention-K1024": (ddconfig([1, 1, 2, 2, 2], [8]), 1024),
    "f16-plain-K64": (ddconfig([1, 1, 2, 2, 2], []), 64),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_ids_and_pixels_equal_taming(name: str, tmp_path: Path) -> None:
    dd, codebook = CONFIGS[name]
    reference = taming_vqgan(dd, embed_dim=4, n_embed=codebook, seed=codebook + len(dd["ch_mult"]))
    logdir = write_taming_logdir(tmp_path / "log", reference, dd, 4, codebook)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ids, pixels = taming_ids_and_pixels(reference, x)
    assert len(ids.unique()) > 4

    converted = load_taming(logdir)
    with torch.no_grad():
        ours = converted.model.encode(x).indices
        decoded = converted.model.decode_indices(ours)
    assert torch.equal(ours, ids)
    assert (decoded - pixels).abs().max() < PIXEL_TOLERANCE
    assert converted.ignored[0] == "3 loss.* tensors (discriminator and LPIPS)"


def test_convert_command_reports_what_it_ignored(tmp_path: Path, capsys) -> None:
    dd, codebook = CONFIGS["f8-attention-K64"]
    reference = taming_vqgan(dd, 4, codebook, seed=0)
    logdir = write_taming_logdir(tmp_path / "log", reference, dd, 4, codebook)
    assert main(["convert", "--from", "taming", str(logdir), str(tmp_path / "tok")]) == 0
    out = capsys.readouterr().out
    assert "ignored: 3 loss.* tensors (discriminator and LPIPS)" in out
    assert "ignored: checkpoint entry 'optimizer_states'" in out
    x = torch.rand(2, 3, 40, 24) * 2 - 1  # not square, not the training resolution
    ids, _ = taming_ids_and_pixels(reference, x)
    assert torch.equal(load_tokenizer(tmp_path / "tok").encode(x), ids)


def test_a_key_the_architecture_lacks_is_named(tmp_path: Path) -> None:
    dd, codebook = CONFIGS["f8-attention-K64"]
    reference = taming_vqgan(dd, 4, codebook, seed=0)
    logdir = write_taming_logdir(tmp_path / "log", reference, dd, 4, codebook,
                                 extra_state={"encoder.down.9.block.0.conv1.weight":
                                              torch.zeros(1)})
    with pytest.raises(ConversionError, match="such as encoder.down.9.block.0.conv1.weight"):
        load_taming(logdir)


def test_other_model_classes_are_refused(tmp_path: Path) -> None:
    dd, codebook = CONFIGS["f8-attention-K64"]
    logdir = write_taming_logdir(tmp_path / "log", taming_vqgan(dd, 4, codebook, 0), dd, 4,
                                 codebook)
    config = logdir / "configs" / "model.yaml"
    config.write_text(config.read_text().replace("taming.models.vqgan.VQModel",
                                                 "taming.models.vqgan.GumbelVQ"))
    with pytest.raises(ConversionError, match="only taming.models.vqgan.VQModel converts"):
        load_taming(logdir)


def test_exact_ties_go_to_the_lowest_index_as_in_taming() -> None:
    """Codes 2, 5 and 6 are equal, and one latent is exactly as far from them as from code
    7; all values are small multiples of 1/2, so every product and sum is exact in float32
    and the rule alone decides: taming's argmin and vqtok's search both take the lowest
    index."""
    quantize_py = taming_module("taming/modules/vqvae/quantize.py")
    codebook = torch.tensor([[4.0, 0.0], [0.0, 4.0], [1.0, 1.0], [-4.0, 0.0], [0.0, -4.0],
                             [1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    reference = quantize_py.VectorQuantizer(len(codebook), 2, beta=0.25)
    reference.embedding.weight.data.copy_(codebook)
    ours = VectorQuantizer(len(codebook), 2, init="normal").eval()
    ours.codebook.data.copy_(codebook)
    ours.initialized.fill_(True)
    # (B, D, h, w): latents on the tied code, between the tied code and code 7 (exactly
    # equidistant: 1.5, 1.5 is at distance 0.5^2 * 2 of both), and elsewhere
    z = torch.tensor([[[[1.0, 1.5, 3.0, 0.0]], [[1.0, 1.5, 0.0, 3.0]]]])
    with torch.no_grad():
        _, _, (_, _, ids) = reference(z)
    assert ids.flatten().tolist() == [2, 2, 0, 1]
    assert ours(z).indices.flatten().tolist() == [2, 2, 0, 1]
