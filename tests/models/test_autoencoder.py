"""Encoder / Decoder / VQAutoencoder: shapes, the decode round trip, gradients, rebuild."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor

from vqtok import registry
from vqtok.models import AutoencoderOutput, Decoder, Encoder, VQAutoencoder
from vqtok.quantizers import FSQ, SimVQ, VectorQuantizer
from vqtok.quantizers.base import Quantizer

# Tiny widths keep every test well under a second on a shared CPU.
TINY = {"channels": 8, "num_groups": 4, "num_res_blocks": 1}
# channel_mult and the downsampling factor each must give, written out by hand.
FACTORS = [((1, 2), 2), ((1, 2, 2), 4), ((1, 1, 2, 2), 8), ((1, 1, 2, 2, 2), 16)]


class NearestQuantizer(Quantizer):
    """Test double: nearest code of a fixed random codebook, straight-through gradient."""

    def __init__(self, codebook_size: int = 16, dim: int = 6) -> None:
        super().__init__()
        self.codebook_size, self.dim = codebook_size, dim
        self.register_buffer("codebook", torch.randn(codebook_size, dim))

    def quantize_rows(self, rows: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        ids = torch.cdist(rows, self.codebook).argmin(dim=1)
        q = self.codebook[ids]
        return rows + (q - rows).detach(), ids, {"commitment": ((rows - q.detach()) ** 2).mean()}

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        self.check_indices(indices)
        return self.codebook[indices].movedim(-1, 1)


def make_model(quantizer: str = "nearest", channel_mult=(1, 2, 2), attention: bool = False,
               in_channels: int = 3, dim: int = 6) -> VQAutoencoder:
    encoder = Encoder(in_channels=in_channels, channel_mult=channel_mult, dim=dim,
                      attention=attention, **TINY)
    decoder = Decoder(out_channels=in_channels, channel_mult=channel_mult, dim=dim,
                      attention=attention, **TINY)
    quantizers = {
        "nearest": lambda: NearestQuantizer(dim=dim),
        "fsq": lambda: FSQ([5, 4, 3], dim=dim),
        "vq": lambda: VectorQuantizer(32, dim),
        "simvq": lambda: SimVQ(32, dim),
    }
    return VQAutoencoder(encoder, quantizers[quantizer](), decoder)


QUANTIZERS = ["nearest", "fsq", "vq", "simvq"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize(("channel_mult", "factor"), FACTORS)
def test_shapes_for_each_factor(channel_mult, factor, attention) -> None:
    model = make_model(channel_mult=channel_mult, attention=attention)
    assert model.downsample_factor == factor
    assert model.encoder.downsample_factor == factor == model.decoder.downsample_factor
    x = torch.randn(2, 3, 32, 48)
    out = model(x)
    assert isinstance(out, AutoencoderOutput)
    assert out.x_hat.shape == x.shape
    assert out.quant.z_q.shape == (2, 6, 32 // factor, 48 // factor)
    assert out.quant.indices.shape == (2, 32 // factor, 48 // factor)
    assert out.quant.indices.dtype == torch.int64
    assert torch.isfinite(out.x_hat).all()


def test_attention_adds_parameters_only_when_asked() -> None:
    plain = Encoder(attention=False, **TINY)
    attn = Encoder(attention=True, **TINY)
    names = [type(m).__name__ for m in attn.modules()]
    assert "SelfAttention" in names
    assert "SelfAttention" not in [type(m).__name__ for m in plain.modules()]
    # one attention block (norm + qkv + proj) and one extra residual block of width 16
    width = 16
    extra_attn = 2 * width + (width * 3 * width + 3 * width) + (width * width + width)
    extra_res = 2 * (2 * width) + 2 * (width * width * 9 + width)
    n_plain = sum(p.numel() for p in plain.parameters())
    n_attn = sum(p.numel() for p in attn.parameters())
    assert n_attn - n_plain == extra_attn + extra_res


def test_self_attention_matches_float64_reference() -> None:
    from vqtok.models.blocks import SelfAttention, norm_factory

    block = SelfAttention(8, norm_factory("group", 4)).double()
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    # independent computation: GroupNorm by hand, one head, softmax(q k^T / sqrt(C)) v
    g = x.reshape(2, 4, -1)
    h = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True)
                                                      + 1e-6)).reshape_as(x)
    h = h * block.norm.weight.view(1, 8, 1, 1) + block.norm.bias.view(1, 8, 1, 1)
    w, b = block.qkv.weight.view(24, 8), block.qkv.bias
    tokens = h.flatten(2).transpose(1, 2)  # (B, HW, C)
    qkv = tokens @ w.T + b
    q, k, v = qkv[..., :8], qkv[..., 8:16], qkv[..., 16:]
    att = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=-1) @ v
    out = att @ block.proj.weight.view(8, 8).T + block.proj.bias
    expected = x + out.transpose(1, 2).reshape_as(x)
    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("norm", ["group", "channel"])
def test_self_attention_is_permutation_equivariant_over_positions(norm: str) -> None:
    """Shuffling the positions of the input shuffles the output the same way: the norm's
    statistics, the 1x1 maps and softmax attention treat positions as a set."""
    from vqtok.models.blocks import SelfAttention, norm_factory

    block = SelfAttention(8, norm_factory(norm, 4)).double()
    x = torch.randn(2, 8, 4, 6, dtype=torch.float64)
    for seed in range(3):
        perm = torch.randperm(24, generator=torch.Generator().manual_seed(seed))
        shuffled = x.flatten(2)[..., perm].reshape_as(x)
        expected = block(x).flatten(2)[..., perm].reshape_as(x)
        torch.testing.assert_close(block(shuffled), expected, rtol=1e-12, atol=1e-12)


def test_channel_norm_matches_float64_reference() -> None:
    from vqtok.models.blocks import ChannelNorm

    norm = ChannelNorm(6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 6))
        norm.bias.copy_(torch.linspace(-1.0, 1.0, 6))
    x = 3.0 + 2.0 * torch.randn(2, 6, 5, 7, dtype=torch.float64)
    # by hand: each pixel's 6 channel values to zero mean, unit (biased) variance
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6)
    expected = expected * norm.weight.view(1, 6, 1, 1) + norm.bias.view(1, 6, 1, 1)
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", ["channel", "group"])
def test_channel_norm_features_do_not_depend_on_the_image_size(norm: str) -> None:
    """Inside a crop, away from its border, a channel-norm encoder computes the same
    features as on the whole image; GroupNorm's image-wide statistics change them."""
    torch.manual_seed(0)
    encoder = Encoder(in_channels=3, channel_mult=(1, 2), dim=4, norm=norm, **TINY).eval()
    image = torch.randn(1, 3, 96, 96)
    image[..., :48] += 2.0  # the two halves differ, so the crop's statistics do too
    with torch.no_grad():
        whole = encoder(image)  # (1, 4, 48, 48)
        crop = encoder(image[..., 24:72, 24:72])  # (1, 4, 24, 24), from cell 12 on
    margin = 8  # feature cells, beyond the receptive field's reach from the crop border
    inner_crop = crop[..., margin:-margin, margin:-margin]
    inner_whole = whole[..., 12 + margin:36 - margin, 12 + margin:36 - margin]
    if norm == "channel":
        torch.testing.assert_close(inner_crop, inner_whole, rtol=1e-4, atol=1e-5)
    else:
        assert (inner_crop - inner_whole).abs().max() > 1e-2


def test_unknown_norm_is_refused() -> None:
    with pytest.raises(ValueError, match=r"norm must be one of \('group', 'channel'\), got 'batch'"):
        Encoder(norm="batch")


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_decode_indices_equals_decode_of_z_q(quantizer) -> None:
    model = make_model(quantizer).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        quant = model.encode(x)
        from_z_q = model.decode(quant.z_q)
        from_ids = model.decode_indices(quant.indices)
    torch.testing.assert_close(from_ids, from_z_q, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_gradient_reaches_every_encoder_parameter(quantizer) -> None:
    model = make_model(quantizer, attention=True)
    x = torch.randn(2, 3, 16, 16)
    out = model(x)
    loss = (out.x_hat - x).abs().mean() + sum(out.quant.losses.values(), torch.tensor(0.0))
    loss.backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # the first conv sees the pixels only through the quantizer's estimator
    assert model.encoder.layers[0].weight.grad.abs().sum() > 0


def test_dim_mismatch_raises() -> None:
    enc = Encoder(dim=6, **TINY)
    dec = Decoder(dim=6, **TINY)
    with pytest.raises(ValueError, match=r"quantizer.dim=7"):
        VQAutoencoder(enc, NearestQuantizer(dim=7), dec)
    with pytest.raises(ValueError, match=r"decoder.dim=5"):
        VQAutoencoder(enc, NearestQuantizer(dim=6), Decoder(dim=5, **TINY))


def test_factor_and_channel_mismatch_raise() -> None:
    enc = Encoder(dim=6, channel_mult=(1, 2, 2), **TINY)
    with pytest.raises(ValueError, match="downsamples by 4"):
        VQAutoencoder(enc, NearestQuantizer(dim=6), Decoder(dim=6, channel_mult=(1, 2), **TINY))
    with pytest.raises(ValueError, match="out_channels=1"):
        VQAutoencoder(enc, NearestQuantizer(dim=6), Decoder(out_channels=1, dim=6, **TINY))
    with pytest.raises(TypeError, match="Quantizer"):
        VQAutoencoder(enc, torch.nn.Identity(), Decoder(dim=6, **TINY))


def test_bad_input_sizes_name_the_size() -> None:
    model = make_model(channel_mult=(1, 2, 2, 2))  # factor 8
    with pytest.raises(ValueError, match=r"20x32.*factor 8"):
        model(torch.randn(1, 3, 20, 32))
    with pytest.raises(ValueError, match=r"3 channels.*\(1, 1, 16, 16\)"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(3, 16, 16\)"):
        model(torch.randn(3, 16, 16))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channel_mult": ()}, "channel_mult"),
        ({"channel_mult": (1, 0)}, "channel_mult"),
        ({"channel_mult": "12"}, "channel_mult"),
        ({"dim": 0}, r"dim must be an int in \[1, 8192\], got 0"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        # caps: what a config file asks for is allocated before any weight is read
        ({"channels": 10**6}, r"channels must be an int in \[1, 8192\]"),
        ({"channels": 4096, "channel_mult": (1, 4)}, r"must stay <= 8192"),
        ({"channel_mult": (1,) * 9}, "channel_mult must be a sequence of 1 to 8"),
    ],
)
def test_bad_constructor_arguments(kwargs, message) -> None:
    args = {**TINY, **kwargs}
    with pytest.raises(ValueError, match=message):
        Encoder(**args)
    with pytest.raises(ValueError, match=message):
        Decoder(**args)


def test_group_norm_groups_divide_each_width() -> None:
    # gcd(num_groups, width): widths 24 and 48 with num_groups=32 -> 8 and 16 groups
    enc = Encoder(channels=24, channel_mult=(1, 2), num_groups=32, dim=4)
    groups = {(m.num_channels, m.num_groups) for m in enc.modules()
              if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {(24, 8), (48, 16)}
    wide = Encoder(channels=64, channel_mult=(1, 2), num_groups=32, dim=4)
    assert {m.num_groups for m in wide.modules() if isinstance(m, torch.nn.GroupNorm)} == {32}


def test_grey_images() -> None:
    model = make_model(in_channels=1)
    assert model.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).x_hat.shape == (2, 1, 32, 32)


@pytest.mark.parametrize("quantizer", ["fsq", "vq", "simvq"])
def test_init_args_recorded_and_rebuild_is_identical(quantizer) -> None:
    model = make_model(quantizer, channel_mult=(1, 2, 2, 2), attention=True)
    model(torch.randn(4, 3, 16, 16))  # one training step's state (k-means / data init)
    model.eval()
    assert model.encoder.init_args == {
        "in_channels": 3, "channels": 8, "channel_mult": (1, 2, 2, 2), "num_res_blocks": 1,
        "dim": 6, "attention": True, "num_groups": 4, "norm": "group",
    }
    assert model.decoder.init_args["out_channels"] == 3
    parts = {}
    for name in ("encoder", "quantizer", "decoder"):
        original = getattr(model, name)
        spec = json.loads(json.dumps(registry.spec_of(original)))  # as in config.json
        rebuilt = registry.build(spec)
        rebuilt.load_state_dict(original.state_dict())
        parts[name] = rebuilt
    rebuilt_model = VQAutoencoder(**parts).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a, b = model(x), rebuilt_model(x)
    assert torch.equal(a.x_hat, b.x_hat)
    assert torch.equal(a.quant.indices, b.quant.indices)
    assert registry.resolve("vqtok.models.Encoder") is Encoder


def test_bf16_autocast_forward_is_finite() -> None:
    model = make_model("fsq")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 16, 16))
    assert torch.isfinite(out.x_hat.float()).all()
    assert out.quant.indices.dtype == torch.int64
