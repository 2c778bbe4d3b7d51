"""The published VQGAN layout (vqtok/models/vqgan.py, docs/interop.md#the-architecture):
its shape facts, the asymmetric downsampling, its argument checks, and that it refuses
tiles. Exactness against the published code is tests/interop/."""

from __future__ import annotations

import pytest
import torch

from vqtok import registry
from vqtok.models.receptive import NotTileableError, receptive_radius
from vqtok.models.vqgan import CornerPadDownsample, VQGANDecoder, VQGANEncoder

SMALL = {"widths": [32, 64], "num_res_blocks": 1, "attention_levels": [1], "z_channels": 8,
         "dim": 4}


def test_shapes_blocks_and_attention() -> None:
    encoder = VQGANEncoder(channels=32, **SMALL)
    decoder = VQGANDecoder(**SMALL)
    assert encoder.downsample_factor == decoder.downsample_factor == 2
    assert [len(level.block) for level in encoder.down] == [1, 1]
    assert [len(level.block) for level in decoder.up] == [2, 2]  # num_res_blocks + 1
    assert [len(level.attn) for level in encoder.down] == [0, 1]
    x = torch.randn(2, 3, 16, 24)
    z = encoder(x)
    assert z.shape == (2, 4, 8, 12)
    assert decoder(z).shape == x.shape
    rebuilt = registry.build(registry.spec_of(encoder))  # what config.json holds
    assert rebuilt.state_dict().keys() == encoder.state_dict().keys()


def test_downsampling_pads_bottom_and_right_only() -> None:
    down = CornerPadDownsample(1)
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 0, 0] = 1.0  # each output copies its window's top-left input
        down.conv.bias.zero_()
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(down(x)[0, 0], x[0, 0, ::2, ::2])  # windows start at 0, 2: no top pad


@pytest.mark.parametrize(("change", "message"), [
    ({"num_groups": 24}, "num_groups=24 must divide every width, got 32"),
    ({"attention_levels": [2]}, r"attention_levels must name levels in \[0, 2\)"),
    ({"widths": []}, "widths must be a list of 1 to 8 ints"),
    ({"z_channels": 0}, "z_channels must be a positive int"),
])
def test_bad_arguments_are_one_clear_error(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VQGANEncoder(channels=32, **{**SMALL, **change})


def test_never_tiled() -> None:
    with pytest.raises(NotTileableError, match="GroupNorm"):
        receptive_radius(VQGANEncoder(channels=32, **SMALL))
