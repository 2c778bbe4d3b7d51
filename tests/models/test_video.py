"""The causal video encoder and decoder: shapes, the 1 + 4k -> 1 + k temporal mapping,
exact causality on randomly initialised models, the first frame encoded alone, and the
causal convolution against a float64 re-implementation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vqtok.models import VideoDecoder, VideoEncoder, VQAutoencoder
from vqtok.models.video import CausalConv3d, Upsample3d, latent_frames
from vqtok.quantizers import FSQ

SMALL = {"channels": 4, "channel_mult": (1, 2, 2, 2), "dim": 4, "num_groups": 2}


def small_model(norm: str = "group", per_frame_levels: int = 0, temporal_factor: int = 4,
                seed: int = 0) -> VQAutoencoder:
    torch.manual_seed(seed)
    kw = {**SMALL, "norm": norm, "per_frame_levels": per_frame_levels,
          "temporal_factor": temporal_factor}
    model = VQAutoencoder(VideoEncoder(in_channels=1, **kw), FSQ(levels=[5, 5, 5, 5], dim=4),
                          VideoDecoder(out_channels=1, **kw))
    return model.eval()


@pytest.mark.parametrize("frames", [1, 5, 17])
def test_shapes_for_1_5_and_17_frames(frames: int) -> None:
    model = small_model()
    x = torch.rand(2, 1, frames, 32, 24) * 2 - 1
    with torch.no_grad():
        out = model(x)
    k = (frames - 1) // 4
    assert tuple(out.quant.z_q.shape) == (2, 4, 1 + k, 4, 3)  # 8x in space
    assert tuple(out.quant.indices.shape) == (2, 1 + k, 4, 3)
    assert tuple(out.x_hat.shape) == tuple(x.shape)
    with torch.no_grad():
        decoded = model.decode_indices(out.quant.indices)
    assert tuple(decoded.shape) == tuple(x.shape)


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_temporal_mapping_is_one_plus_factor_k_to_one_plus_k(factor: int) -> None:
    enc = VideoEncoder(in_channels=1, temporal_factor=factor, **SMALL).eval()
    dec = VideoDecoder(out_channels=1, temporal_factor=factor, **SMALL).eval()
    for k in range(4):
        frames = 1 + factor * k
        with torch.no_grad():
            z = enc(torch.zeros(1, 1, frames, 16, 16))
            assert z.shape[2] == 1 + k == latent_frames(frames, factor)
            assert dec(z).shape[2] == frames


@pytest.mark.parametrize("frames", [2, 4, 6, 16, 18])
def test_a_frame_count_that_is_not_1_plus_4k_is_refused(frames: int) -> None:
    model = small_model()
    with pytest.raises(ValueError, match=r"has \d+ frames; the model takes 1 \+ 4k \(1, 5, 9"):
        model.encode(torch.zeros(1, 1, frames, 16, 16))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="temporal_factor must be one of"):
        VideoEncoder(temporal_factor=3, **SMALL)
    with pytest.raises(ValueError, match="temporal_factor must be one of"):
        VideoEncoder(temporal_factor=16, **SMALL)  # only 3 steps of 2
    with pytest.raises(ValueError, match="per_frame_levels must be"):
        VideoDecoder(per_frame_levels=5, **SMALL)
    with pytest.raises(ValueError, match="spatial downsampling factor 8"):
        VideoEncoder(in_channels=1, **SMALL)(torch.zeros(1, 1, 5, 12, 16))
    with pytest.raises(ValueError, match="with 1 channels"):
        VideoEncoder(in_channels=1, **SMALL)(torch.zeros(1, 3, 5, 16, 16))


@pytest.mark.parametrize(("norm", "per_frame_levels"), [("group", 0), ("channel", 0),
                                                        ("group", 2)])
def test_changing_frame_j_never_changes_earlier_latents_or_ids(norm: str,
                                                               per_frame_levels: int) -> None:
    """Latent frame i covers input frames 4i - 3 .. 4i (frame 0 alone for i = 0): a change
    of frame j leaves latents i < ceil(j / 4) bit for bit unchanged, and does change
    latent ceil(j / 4) (so the check has something to find)."""
    model = small_model(norm, per_frame_levels)
    frames = 17
    x = torch.rand(2, 1, frames, 16, 16) * 2 - 1
    with torch.no_grad():
        base = model.encode(x)
        for j in range(frames):
            y = x.clone()
            y[:, :, j] = torch.rand_like(y[:, :, j]) * 2 - 1
            out = model.encode(y)
            first = math.ceil(j / 4)
            assert torch.equal(out.z_q[:, :, :first], base.z_q[:, :, :first]), j
            assert torch.equal(out.indices[:, :first], base.indices[:, :first]), j
            pre = model.encoder(y)[:, :, first]
            assert not torch.equal(pre, model.encoder(x)[:, :, first]), j


def test_decoded_frames_depend_only_on_latents_at_or_before_their_own() -> None:
    """Decoded frame j comes from latent frames <= ceil(j / 4)."""
    model = small_model()
    torch.manual_seed(1)
    z = torch.randn(1, 4, 5, 2, 2)
    with torch.no_grad():
        base = model.decoder(z)
        for i in range(5):
            changed = z.clone()
            changed[:, :, i] += 1.0
            diff = (model.decoder(changed) - base).abs().amax(dim=(0, 1, 3, 4))
            untouched = [j for j in range(17) if math.ceil(j / 4) < i]
            assert diff[untouched].eq(0).all(), i
            assert diff[max(0, 4 * i - 3)] > 0, i


@pytest.mark.parametrize("frames", [5, 17])
def test_first_frame_is_encoded_alone(frames: int) -> None:
    """The first latent frame of a clip is that of its first frame as a one-frame clip."""
    model = small_model()
    x = torch.rand(3, 1, frames, 16, 16) * 2 - 1
    with torch.no_grad():
        clip, alone = model.encode(x), model.encode(x[:, :, :1])
    assert torch.equal(clip.indices[:, :1], alone.indices)
    assert torch.equal(clip.z_q[:, :, :1], alone.z_q)


def reference_causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          stride: tuple[int, int]) -> torch.Tensor:
    """Float64 causal 3-D convolution written out tap by tap: output t (at time stride s)
    sums ``weight[:, :, d]`` (a 2-D convolution) over input frames ``s t - (kt - 1) + d``,
    frames before the first replaced by the first."""
    kt, k = weight.shape[2], weight.shape[3]
    frames = x.shape[2]
    outputs = []
    for t in range(0, frames, stride[0]):
        total = 0
        for d in range(kt):
            source = max(0, t - (kt - 1) + d)
            total = total + F.conv2d(x[:, :, source], weight[:, :, d], stride=stride[1],
                                     padding=k // 2)
        outputs.append(total + bias[None, :, None, None])
    return torch.stack(outputs, dim=2)


@pytest.mark.parametrize(("stride", "time_kernel"), [((1, 1), 3), ((2, 2), 3), ((1, 2), 1),
                                                     ((1, 1), 1)])
def test_causal_conv_matches_a_float64_reference(stride: tuple[int, int],
                                                 time_kernel: int) -> None:
    torch.manual_seed(0)
    conv = CausalConv3d(3, 5, stride=stride, time_kernel=time_kernel).double()
    x = torch.randn(2, 3, 9, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        got = conv(x)
        want = reference_causal_conv(x, conv.conv.weight, conv.conv.bias, stride)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    if stride[0] == 2:  # 1 + 2m frames -> 1 + m
        assert got.shape[2] == 5


def test_temporal_upsampling_repeats_every_frame_but_the_first() -> None:
    up = Upsample3d(1, temporal=True, time_kernel=1)
    with torch.no_grad():  # make the convolution the identity to see the repetition
        up.conv.conv.weight.zero_()
        up.conv.conv.weight[0, 0, 0, 1, 1] = 1.0
        up.conv.conv.bias.zero_()
        x = torch.arange(3.0).reshape(1, 1, 3, 1, 1)
        y = up(x)
    assert y.shape == (1, 1, 5, 2, 2)
    assert y[0, 0, :, 0, 0].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0]
