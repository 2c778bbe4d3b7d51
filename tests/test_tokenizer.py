"""ImageTokenizer: agrees with the model, batch independence, padding, conversions, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import assert_ids_agree, undecided_ids
from vqtok.models import Decoder, Encoder, VQAutoencoder
from vqtok.quantizers import FSQ
from vqtok.tokenizers import ImageTokenizer

TINY = {"channels": 8, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "dim": 4,
        "num_groups": 4}
K = 8 * 5 * 5 * 5  # FSQ levels [8, 5, 5, 5]


def tiny_model(in_channels: int = 3, seed: int = 0, norm: str = "group") -> VQAutoencoder:
    torch.manual_seed(seed)
    return VQAutoencoder(Encoder(in_channels=in_channels, norm=norm, **TINY),
                         FSQ(levels=[8, 5, 5, 5]),
                         Decoder(out_channels=in_channels, norm=norm, **TINY))


@pytest.fixture(scope="module")
def rgb() -> ImageTokenizer:
    return ImageTokenizer(tiny_model(3))


@pytest.fixture(scope="module")
def grey() -> ImageTokenizer:
    return ImageTokenizer(tiny_model(1, seed=1))


def random_pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth-ish random uint8 images, so that different images give different ids."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def normalised(pixels: np.ndarray) -> torch.Tensor:
    """Independent reference of the documented convention: (B, H, W, C) uint8 ->
    (B, C, H, W) float32 pixels / 255 * 2 - 1."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 * 2 - 1


def to_uint8(x_hat: torch.Tensor) -> np.ndarray:
    return ((x_hat + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8).permute(
        0, 2, 3, 1).numpy()


def arrays(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])


# ---- agreement with the model ---------------------------------------------------------


def test_encode_decode_equals_model_reconstruction(rgb: ImageTokenizer) -> None:
    pixels = random_pixels((4, 16, 16, 3))
    ids = rgb.encode([Image.fromarray(p) for p in pixels])
    assert ids.dtype == torch.int64 and ids.shape == (4, 4, 4)
    decoded = arrays(rgb.decode(ids))
    # The model's own forward pass, one image at a time, on the normalised input.
    with torch.inference_mode():
        outs = [rgb.model(normalised(pixels[i:i + 1])) for i in range(4)]
    assert torch.equal(ids, torch.cat([o.quant.indices for o in outs]))
    expected = np.concatenate([to_uint8(o.x_hat) for o in outs])
    assert np.array_equal(decoded, expected)
    assert torch.equal(rgb.decode_to_tensor(ids), torch.cat([o.x_hat for o in outs]))
    # ... and within one grey level of the model run as a single batch of 4.
    with torch.inference_mode():
        batched = rgb.model(normalised(pixels))
    assert np.abs(decoded.astype(int) - to_uint8(batched.x_hat).astype(int)).max() <= 1


@pytest.mark.parametrize("norm", ["group", "channel"])
def test_batch_size_independence(norm: str) -> None:
    rgb = ImageTokenizer(tiny_model(3, norm=norm))
    sizes = [(16, 16), (13, 16), (16, 16), (20, 12), (9, 9)] * 4  # 20 images, mixed
    images = [Image.fromarray(random_pixels((h, w, 3), seed=i)) for i, (h, w) in
              enumerate(sizes)]
    runs = {bs: rgb.encode_each(images, batch_size=bs) for bs in (1, 3, 16)}
    # Bit for bit by construction (module doc of vqtok.tokenizer): fixed batches and
    # per-sample kernels never let the caller's batch size choose a kernel or a shape, and
    # FSQ rounds each value alone; so these equalities hold on any CPU.
    for bs in (3, 16):
        for (ids1, size1), (ids, size) in zip(runs[1], runs[bs]):
            assert size == size1 and torch.equal(ids, ids1)
    same = [im for im, s in zip(images, sizes) if s == (16, 16)]
    ids = rgb.encode(same, batch_size=1)
    pixels = {bs: arrays(rgb.decode(ids, batch_size=bs)) for bs in (1, 3, 16)}
    assert np.array_equal(pixels[1], pixels[3]) and np.array_equal(pixels[1], pixels[16])
    # bit-equal before rounding too (torch's default CPU kernels differ in the low bits
    # between a batch of one and larger batches)
    floats = {bs: rgb.decode_to_tensor(ids, batch_size=bs) for bs in (1, 3, 16)}
    assert torch.equal(floats[1], floats[3]) and torch.equal(floats[1], floats[16])
    assert floats[1].shape == (len(same), 3, 16, 16)
    # one image alone gives the ids it got inside the batches
    assert torch.equal(rgb.encode(same[5])[0], ids[5])


def test_large_images_of_an_untileable_model_run_alone_on_torchs_kernels(monkeypatch) -> None:
    # GroupNorm: never tiled, so images above the fixed batches' size run one at a time on
    # torch's own kernels (module doc). The reference is the model's forward pass on each
    # image alone, channels-last, with torch's choice of kernels untouched.
    rgb = ImageTokenizer(tiny_model(3))
    assert rgb.halo is None and rgb.tile_size is None
    pixels = random_pixels((3, 192, 200, 3), seed=3)  # 38,400 pixels: over the fixed batches
    with torch.inference_mode():
        outs = [rgb.model(normalised(pixels[i:i + 1]).contiguous(
            memory_format=torch.channels_last)) for i in range(3)]
        decoded = torch.cat([rgb.model.decode_indices(o.quant.indices) for o in outs])
    want = torch.cat([o.quant.indices for o in outs])
    for batch_size in (1, 3):  # the same bits whatever the batch
        assert torch.equal(rgb.encode(pixels, batch_size=batch_size), want)
        assert torch.equal(rgb.decode_to_tensor(want, batch_size=batch_size), decoded)
    seen = []
    encode = rgb.model.encode

    def spy(x: torch.Tensor) -> object:
        seen.append((x.shape[0], torch.backends.mkldnn.enabled))
        return encode(x)

    monkeypatch.setattr(rgb.model, "encode", spy)
    rgb.encode(pixels[:2], batch_size=2)
    assert seen == [(1, True), (1, True)]  # one image a call, oneDNN left on


def test_fast_mode_matches_the_batched_model_and_flags_are_restored(monkeypatch) -> None:
    fast = ImageTokenizer(tiny_model(3), batch_invariant=False)
    pixels = random_pixels((4, 16, 16, 3))
    ids = fast.encode(pixels)
    with torch.inference_mode():
        out = fast.model(normalised(pixels))  # torch's default kernels, one batch of 4
    assert torch.equal(ids, out.quant.indices)
    assert torch.equal(fast.decode_to_tensor(ids), out.x_hat)
    assert torch.backends.mkldnn.enabled and torch._C._get_nnpack_enabled()
    strict = ImageTokenizer(tiny_model(3))
    strict.encode(pixels)
    assert torch.backends.mkldnn.enabled and torch._C._get_nnpack_enabled()

    def crash(ids: torch.Tensor) -> torch.Tensor:
        assert not torch.backends.mkldnn.enabled  # inside the per-sample kernels
        raise RuntimeError("decoder failed")

    monkeypatch.setattr(strict.model, "decode_indices", crash)
    with pytest.raises(RuntimeError, match="decoder failed"):
        strict.decode(torch.zeros(1, 4, 4, dtype=torch.int64))
    assert torch.backends.mkldnn.enabled and torch._C._get_nnpack_enabled()


def test_model_is_used_in_eval_mode_and_ids_are_plain_tensors(rgb: ImageTokenizer) -> None:
    image = Image.fromarray(random_pixels((16, 16, 3)))
    before = rgb.encode(image)
    rgb.model.train()
    after = rgb.encode(image)
    assert not rgb.model.training and torch.equal(before, after)
    assert not after.is_inference()
    after[0, 0, 0] = 1  # writable outside inference mode


def test_save_and_load_give_identical_ids_and_pixels(rgb: ImageTokenizer, tmp_path: Path) -> None:
    images = [Image.fromarray(random_pixels((16, 16, 3), seed=s)) for s in range(3)]
    rgb.save_pretrained(tmp_path / "tok")
    loaded = ImageTokenizer.from_pretrained(tmp_path / "tok", device="cpu")
    ids = rgb.encode(images)
    assert torch.equal(loaded.encode(images), ids)
    assert np.array_equal(arrays(loaded.decode(ids)), arrays(rgb.decode(ids)))
    assert (loaded.codebook_size, loaded.downsample_factor, loaded.channels) == (K, 4, 3)


# ---- padding and sizes ----------------------------------------------------------------


def test_tokens_shape(rgb: ImageTokenizer) -> None:
    assert rgb.tokens_shape(32, 32) == (8, 8)
    assert rgb.tokens_shape(33, 4) == (9, 1)
    assert rgb.tokens_shape(4, 5) == (1, 2)
    with pytest.raises(ValueError, match="3x8"):
        rgb.tokens_shape(3, 8)


def test_padding_replicates_edges_and_decode_crops_back(rgb: ImageTokenizer) -> None:
    pixels = random_pixels((30, 27, 3))
    ids, sizes = rgb.encode_with_sizes(Image.fromarray(pixels))
    assert ids.shape == (1, 8, 7) and sizes == [(30, 27)]
    # independent padding: numpy edge mode to 32 x 28
    padded = np.pad(pixels, ((0, 2), (0, 1), (0, 0)), mode="edge")
    assert torch.equal(ids, rgb.encode(padded))
    cropped = rgb.decode(ids, sizes=sizes)[0]
    full = rgb.decode(ids)[0]
    assert cropped.size == (27, 30) and full.size == (28, 32)  # PIL sizes are (W, H)
    assert cropped.mode == "RGB"
    assert np.array_equal(np.asarray(cropped), np.asarray(full)[:30, :27])


def test_sizes_must_match_the_grid(rgb: ImageTokenizer) -> None:
    ids = torch.zeros(2, 8, 7, dtype=torch.int64)
    with pytest.raises(ValueError, match="does not give the token grid"):
        rgb.decode(ids, sizes=[(30, 27), (16, 27)])
    with pytest.raises(ValueError, match="got 1 sizes for 2"):
        rgb.decode(ids, sizes=[(30, 27)])


def test_tiny_image_is_refused_with_its_size(rgb: ImageTokenizer) -> None:
    with pytest.raises(ValueError, match="3x20 pixels"):
        rgb.encode(Image.new("RGB", (20, 3)))
    with pytest.raises(ValueError, match="image 1: .*2x2 pixels"):
        rgb.encode([Image.new("RGB", (8, 8)), np.zeros((2, 2, 3), np.uint8)])


def test_mixed_token_grids_need_encode_each(rgb: ImageTokenizer) -> None:
    a, b = Image.new("RGB", (16, 16)), Image.new("RGB", (8, 16))
    with pytest.raises(ValueError, match="different token grids.*encode_each"):
        rgb.encode([a, b])
    (ids_a, size_a), (ids_b, size_b) = rgb.encode_each([a, b])
    assert ids_a.shape == (4, 4) and ids_b.shape == (4, 2)
    assert size_a == (16, 16) and size_b == (16, 8)
    # sizes that pad to the same grid stack fine
    assert rgb.encode([a, Image.new("RGB", (14, 15))]).shape == (2, 4, 4)


# ---- input types and modes ------------------------------------------------------------


def test_modes_are_converted(rgb: ImageTokenizer, grey: ImageTokenizer) -> None:
    pixels = random_pixels((16, 16, 3))
    base = Image.fromarray(pixels)
    # P: equals PIL's own RGB conversion of the palette image
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert torch.equal(rgb.encode(pal), rgb.encode(np.asarray(pal.convert("RGB"))))
    # CMYK: equals PIL's RGB conversion
    cmyk = base.convert("CMYK")
    assert torch.equal(rgb.encode(cmyk), rgb.encode(np.asarray(cmyk.convert("RGB"))))
    # L into an RGB model: grey repeated on three channels
    lum = random_pixels((16, 16), seed=3)
    assert torch.equal(rgb.encode(Image.fromarray(lum)),
                       rgb.encode(np.repeat(lum[..., None], 3, axis=2)))
    # RGB into a grey model: R = G = B gives back that grey exactly
    assert torch.equal(grey.encode(np.repeat(lum[..., None], 3, axis=2)),
                       grey.encode(Image.fromarray(lum)))
    # 16-bit grey: v * 257 / 65535 == v / 255
    wide = Image.fromarray(lum.astype(np.uint16) * 257)
    assert wide.mode == "I;16"
    assert torch.equal(grey.encode(wide), grey.encode(Image.fromarray(lum)))


def test_alpha_is_composited_on_white(rgb: ImageTokenizer, grey: ImageTokenizer) -> None:
    pixels = random_pixels((16, 16, 3))
    alpha = np.where(random_pixels((16, 16), seed=7) > 127, 255, 0).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([pixels, alpha]))
    assert rgba.mode == "RGBA"
    on_white = np.where(alpha[..., None] == 255, pixels, 255).astype(np.uint8)
    assert torch.equal(rgb.encode(rgba), rgb.encode(on_white))
    la = Image.fromarray(np.dstack([pixels[..., 0], alpha]))
    assert la.mode == "LA"
    assert torch.equal(grey.encode(la),
                       grey.encode(np.where(alpha == 255, pixels[..., 0], 255).astype(np.uint8)))
    # half transparency: c * a + 1 - a in [0, 1], within PIL's rounding of 1/255
    half = np.dstack([pixels, np.full((16, 16), 128, np.uint8)])
    x = rgb.preprocess(Image.fromarray(half))
    ref = pixels / 255 * (128 / 255) + (1 - 128 / 255)
    assert np.abs((x.numpy().transpose(1, 2, 0) + 1) / 2 - ref).max() <= 1.01 / 255


def test_numpy_and_tensor_inputs(rgb: ImageTokenizer) -> None:
    pixels = random_pixels((3, 16, 16, 3))
    expected = rgb.encode([Image.fromarray(p) for p in pixels])
    assert torch.equal(rgb.encode(pixels), expected)                      # (B, H, W, C)
    assert torch.equal(rgb.encode(list(pixels)), expected)                # list of (H, W, C)
    assert torch.equal(rgb.encode(pixels.astype(np.float64) / 255), expected)  # float [0, 1]
    assert torch.equal(rgb.encode(pixels.astype(np.uint16) * 257), expected)   # uint16
    assert torch.equal(rgb.encode(normalised(pixels)), expected)          # (B, C, H, W)
    assert torch.equal(rgb.encode(normalised(pixels)[1])[0], expected[1])  # (C, H, W)
    assert torch.equal(rgb.preprocess(pixels[0]), normalised(pixels[:1])[0])


@pytest.mark.parametrize("bad, match", [
    (np.zeros((16, 16, 5), np.uint8), r"C in 1..4"),
    (np.zeros((16, 16, 3), np.int32), "dtype uint8, uint16 or float"),
    (np.full((16, 16, 3), 2.0), r"must lie in \[0, 1\]"),
    (np.full((16, 16, 3), np.nan), r"must lie in \[0, 1\]"),
    (torch.zeros(3, 16, 16, dtype=torch.uint8), "float tensor"),
    (torch.zeros(1, 16, 16), "C = 3"),
    (torch.full((3, 16, 16), 255.0), r"lie in \[-1, 1\]"),
    (torch.zeros(2, 3, 3, 16, 16), "got shape"),
    ("image.png", "got str"),
    ([], "no images"),
    ([[Image.new("RGB", (8, 8))]], "nested list"),
])
def test_bad_images(rgb: ImageTokenizer, bad, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rgb.encode(bad)


# ---- decode validation ----------------------------------------------------------------


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(1, 4, 4), "integer token ids"),
    (torch.zeros(1, 4, 4, dtype=torch.bool), "integer token ids"),
    (np.zeros((1, 4, 4), np.float32), "integer token ids"),
    (torch.zeros(4, dtype=torch.int64), r"shape \(B, h, w\) or \(h, w\)"),
    (torch.zeros(1, 1, 4, 4, dtype=torch.int64), r"shape \(B, h, w\) or \(h, w\)"),
    (torch.zeros(1, 0, 4, dtype=torch.int64), r"shape \(B, h, w\)"),
    (torch.full((1, 4, 4), K), rf"\[0, {K}\), got values in \[{K}, {K}\]"),
    (torch.full((4, 4), -1), rf"\[0, {K}\), got values in \[-1, -1\]"),
    ([[1, 2]], "tensor or numpy array"),
])
def test_bad_ids(rgb: ImageTokenizer, bad, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rgb.decode(bad)


def test_decode_accepts_one_grid_and_numpy(rgb: ImageTokenizer, grey: ImageTokenizer) -> None:
    ids = torch.randint(0, K, (4, 4), generator=torch.Generator().manual_seed(0))
    one = rgb.decode(ids)
    assert len(one) == 1 and one[0].size == (16, 16)
    assert np.array_equal(np.asarray(rgb.decode(ids.numpy().astype(np.int32))[0]),
                          np.asarray(one[0]))
    assert grey.decode(ids)[0].mode == "L"


def test_bad_batch_size(rgb: ImageTokenizer) -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        rgb.encode(Image.new("RGB", (8, 8)), batch_size=0)


def test_fixed_batches_do_not_depend_on_neighbours_or_places() -> None:
    """Small images run in batches of a size fixed by the image size (module doc): an
    image's ids are the same alone, in any order and beside any other images, and equal
    the model's own forward pass on a batch of that size (an independent run)."""
    rgb = ImageTokenizer(tiny_model(3, seed=2))
    assert rgb.planner.fixed_batch(32, 32) == 64 and rgb.planner.fixed_batch(64, 64) == 16
    assert rgb.planner.fixed_batch(256, 256) is None  # large: per-sample kernels
    fast = ImageTokenizer(tiny_model(3), batch_invariant=False)
    assert fast.planner.fixed_batch(32, 32) is None
    images = list(random_pixels((150, 32, 32, 3), seed=3))
    alone = torch.cat([rgb.encode(im) for im in images[:5]])
    together = rgb.encode(images, batch_size=150)  # three batches of 64, the last partial
    order = np.random.default_rng(0).permutation(150)
    shuffled = rgb.encode([images[i] for i in order], batch_size=150)
    assert torch.equal(together[:5], alone)
    assert torch.equal(shuffled[np.argsort(order)], together)
    with torch.inference_mode():
        by_model = rgb.model.encode(normalised(np.stack(images[:64]))).indices
    assert torch.equal(together[:64], by_model)


def test_compiled_encoder_gives_eager_ids_whatever_the_batch() -> None:
    """``compile=True`` (inductor) on the fixed batches: the same ids as eager mode, alone,
    together and shuffled, with one graph built for the one image size."""
    eager = ImageTokenizer(tiny_model(3, seed=2))
    compiled = ImageTokenizer(tiny_model(3, seed=2), compile=True)
    images = list(random_pixels((100, 32, 32, 3), seed=4))
    expected = eager.encode(images, batch_size=100)
    together = compiled.encode(images, batch_size=100)
    # inductor generates its own pointwise kernels (tanh of the FSQ bound among them): its
    # ids equal eager's wherever no value lies within float rounding of an FSQ rounding
    # boundary (tests.helpers.undecided_ids); compiled runs of the same graph agree exactly.
    order = np.random.default_rng(1).permutation(100)
    shuffled = compiled.encode([images[i] for i in order], batch_size=100)
    assert compiled._compiled is not None and compiled._compiled.failed is None
    assert compiled._compiled.shapes == {(64, 3, 32, 32)}
    with torch.inference_mode():
        z = eager.model.encoder(torch.stack([eager.preprocess(im) for im in images]))
    undecided = undecided_ids(eager.model.quantizer, z)
    assert_ids_agree(together, expected, undecided)
    assert torch.equal(shuffled[np.argsort(order)], together)
    assert torch.equal(compiled.encode(images[7]), together[7:8])
