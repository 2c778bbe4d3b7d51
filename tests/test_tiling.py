"""Tiled encode and decode: the halo from the layers is the true receptive field, tiles give
the whole image's ids and pixels bit for bit, models that mix all positions are refused,
and a 12-megapixel photo round-trips in bounded memory (slow)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import PEAK_RSS_SOURCE, tiny_model
from vqtok.cli import main
from vqtok.data import PHOTOS_DIR
from vqtok.formats.images import DEFAULT_MAX_PIXELS, TILED_MAX_PIXELS
from vqtok.formats.tokenizer_dir import save_tokenizer_dir
from vqtok.models import Decoder, Encoder
from vqtok.models.receptive import NotTileableError, receptive_radius
from vqtok.quantizers import FSQ, ResidualQuantizer
from vqtok.tokenizers import ImageTokenizer
from vqtok.tokenizers.tiling import DEFAULT_TILE_SIZE, tile_spans

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "checkpoints" / "photos_fsq"
PHOTO_ARGS = {"channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "dim": 16,
              "norm": "channel"}


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A crop of a real test photo whose sides are not multiples of 4 nor of any tile."""
    folder = PHOTOS_DIR / "test"  # embedded in the package: no data set needed
    with Image.open(min(folder.iterdir())) as image:
        return image.convert("RGB").crop((3, 5, 3 + 150, 5 + 101))


# ---- the receptive field ---------------------------------------------------------------


def test_radius_of_the_photo_model_by_hand() -> None:
    # Encoder, in pixels: conv_in 1; level 0 res block 1 + 1; stride-2 conv 1 (spacing
    # becomes 2); level 1 res block 2 + 2; stride-2 conv 2 (spacing 4); level 2 res block
    # 4 + 4; middle res block 4 + 4; conv_out 4.  Total 30.
    assert receptive_radius(Encoder(in_channels=3, **PHOTO_ARGS)) == 30
    # Decoder, in tokens: conv_in 1; middle and level 2 res blocks 2 + 2; upsample conv at
    # spacing 1/2: 0.5; level 1 res block 0.5 + 0.5; upsample conv at 1/4: 0.25; level 0
    # res block 0.25 + 0.25; conv_out 0.25.  Total 7.5.
    assert receptive_radius(Decoder(out_channels=3, **PHOTO_ARGS)) == 7.5
    assert ImageTokenizer.from_pretrained(PHOTOS).halo == (math.ceil(30 / 4), 8 + 1)


def float64_model(seed: int = 0) -> tuple[Encoder, Decoder]:
    torch.manual_seed(seed)
    encoder = Encoder(in_channels=1, **{**PHOTO_ARGS, "channels": 8, "dim": 4}).double()
    decoder = Decoder(out_channels=1, **{**PHOTO_ARGS, "channels": 8, "dim": 4}).double()
    return encoder.eval(), decoder.eval()


def test_the_computed_radius_is_the_measured_window() -> None:
    """Brute force, in float64: perturb one input position at a growing distance from a
    position in the middle and see whether that position's output moves."""
    encoder, decoder = float64_model()
    f = encoder.downsample_factor
    radius = receptive_radius(encoder)  # 30 pixels for this layout
    x = torch.rand(1, 1, 96, 96, dtype=torch.float64) * 2 - 1
    t = 12  # a token in the middle, centred on pixel t * f
    reaches = {}
    with torch.no_grad():
        base = encoder(x)[0, :, t, t]
        for d in (-radius - 2, -radius - 1, -radius, -radius + 1, radius - 1, radius,
                  radius + 1, radius + 2):  # the window is an interval: its ends suffice
            moved = x.clone()
            moved[0, 0, t * f + int(d), t * f] += 1.0
            reaches[d] = not torch.equal(encoder(moved)[0, :, t, t], base)
    assert reaches == {d: abs(d) <= radius for d in reaches}

    dec_radius = receptive_radius(decoder)  # 7.5 tokens
    z = torch.rand(1, 4, 24, 24, dtype=torch.float64)
    with torch.no_grad():
        block = decoder(z)[0, :, t * f:(t + 1) * f, t * f:(t + 1) * f]  # token t's pixels
        reach = []
        for d in range(-11, 12):
            moved = z.clone()
            moved[0, :, t + d, t] += 1.0
            if not torch.equal(decoder(moved)[0, :, t * f:(t + 1) * f, t * f:(t + 1) * f],
                               block):
                reach.append(d)
    # the window is what the layers say, give or take the rounding of the upsampling,
    # and always inside the halo the tokenizer uses (ceil(radius) + 1)
    assert math.floor(dec_radius) <= max(abs(d) for d in reach) <= math.ceil(dec_radius)
    assert max(abs(d) for d in reach) < math.ceil(dec_radius) + 1


@pytest.mark.parametrize(("norm", "attention", "match"), [
    ("group", False, "GroupNorm layers"),
    ("channel", True, "self-attention block"),
])
def test_models_that_mix_all_positions_are_not_tiled(norm: str, attention: bool,
                                                     match: str) -> None:
    with pytest.raises(NotTileableError, match=match):
        receptive_radius(Encoder(in_channels=3, attention=attention,
                                 **{**PHOTO_ARGS, "norm": norm}))
    model = tiny_model(norm=norm)
    if attention:
        model.encoder = Encoder(in_channels=3, attention=True, channels=8, dim=4, norm=norm)
    auto = ImageTokenizer(model)
    assert auto.tile_size is None and auto.halo is None
    assert auto.max_pixels == DEFAULT_MAX_PIXELS  # whole images: the smaller budget
    with pytest.raises(ValueError, match=f"tile_size=64: this model cannot run on tiles: "
                                         f".*{match}"):
        ImageTokenizer(model, tile_size=64)


def test_tile_spans_cover_each_position_once() -> None:
    for n, size, halo in [(1, 8, 3), (37, 8, 3), (40, 8, 0), (40, 40, 5), (41, 13, 9)]:
        spans = tile_spans(n, size, halo)
        covered = [i for start, stop, _, _ in spans for i in range(start, stop)]
        assert covered == list(range(n))
        for start, stop, lo, hi in spans:
            assert stop - start <= size
            assert (lo, hi) == (max(0, start - halo), min(n, stop + halo))


# ---- tiles equal the whole image --------------------------------------------------------


@pytest.mark.parametrize("tile_size", [48, 102])  # 102 -> 100: no multiple of the image
def test_tiled_ids_and_pixels_equal_the_whole_image(photo: Image.Image, tile_size: int) -> None:
    whole = ImageTokenizer.from_pretrained(PHOTOS, tile_size=None)
    tiled = ImageTokenizer.from_pretrained(PHOTOS, tile_size=tile_size)
    assert tiled.tile_size == tile_size // 4 * 4
    ids, sizes = whole.encode_with_sizes(photo)  # 101 x 150 -> 26 x 38 tokens
    tiled_ids, tiled_sizes = tiled.encode_with_sizes(photo)
    assert tiled_sizes == sizes == [(101, 150)]
    # Bit for bit by construction (docs/architecture.md, Exactness): the per-sample kernels
    # (im2col + one GEMM per sample) give each position the same arithmetic whatever the
    # input size, and FSQ rounds each value alone. This rests on BLAS's matrix kernel
    # giving an output element the same bits whatever the number of positions (columns)
    # of the product, which holds for its matrix kernel; no tile here is one position wide.
    assert torch.equal(tiled_ids, ids)
    assert np.array_equal(np.asarray(tiled.decode(ids, sizes)[0]),
                          np.asarray(whole.decode(ids, sizes)[0]))
    assert torch.equal(tiled.decode_to_tensor(ids), whole.decode_to_tensor(ids))


def test_tiles_with_a_stage_axis() -> None:
    stages = [FSQ(levels=[4, 4], dim=4) for _ in range(3)]
    model = tiny_model(ResidualQuantizer(stages), norm="channel").eval()
    whole, tiled = ImageTokenizer(model, tile_size=None), ImageTokenizer(model, tile_size=12)
    image = np.random.default_rng(0).integers(0, 256, (45, 38, 3), dtype=np.uint8)
    ids = whole.encode(image)
    assert ids.shape == (1, 12, 10, 3) and torch.equal(tiled.encode(image), ids)
    for s in (1, 3):
        assert torch.equal(tiled.decode_to_tensor(ids[..., :s]),
                           whole.decode_to_tensor(ids[..., :s]))


def test_tiled_models_get_the_larger_budget() -> None:
    tokenizer = ImageTokenizer.from_pretrained(PHOTOS)
    assert tokenizer.tile_size == DEFAULT_TILE_SIZE and tokenizer.max_pixels == TILED_MAX_PIXELS
    # a declared size over even that budget is refused before anything is allocated
    with pytest.raises(ValueError, match="over the budget of 67,108,864"):
        tokenizer.decode(torch.zeros(3000, 3000, dtype=torch.int64))


def test_cli_tiles_give_the_whole_image_files(tmp_path: Path, photo: Image.Image,
                                              capsys) -> None:
    photo.save(tmp_path / "p.png")
    runs = {}
    for tile in ("none", "64"):
        npz, out = tmp_path / f"{tile}.npz", tmp_path / f"out_{tile}"
        assert main(["encode", str(tmp_path / "p.png"), "--tokenizer", str(PHOTOS), "--out",
                     str(npz), "--quiet", "--tile-size", tile]) == 0
        assert main(["decode", str(npz), "--tokenizer", str(PHOTOS), "--out", str(out),
                     "--quiet", "--tile-size", tile]) == 0
        with np.load(npz) as data:
            runs[tile] = (data["ids"],
                          np.asarray(Image.open(out / "p.png")))
    assert np.array_equal(runs["none"][0], runs["64"][0])
    assert np.array_equal(runs["none"][1], runs["64"][1])
    # a GroupNorm model refuses an explicit tile size in one line
    group = save_tokenizer_dir(tiny_model().eval(), tmp_path / "group")
    capsys.readouterr()
    status = main(["encode", str(tmp_path / "p.png"), "--tokenizer", str(group), "--out",
                   str(tmp_path / "g.npz"), "--tile-size", "64"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert "cannot run on tiles: it has GroupNorm layers" in err


# ---- memory --------------------------------------------------------------------------

RSS_CHILD = PEAK_RSS_SOURCE + r"""
import sys
import numpy as np
from PIL import Image
from vqtok.cli import main
folder = sys.argv[1]
small = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
Image.fromarray(small).resize((4000, 3000), Image.Resampling.BILINEAR).save(folder + "/big.png")
del small
start = peak_rss_bytes()
tok = ["--tokenizer", "checkpoints/photos_fsq", "--quiet"]
assert main(["encode", folder + "/big.png", "--out", folder + "/t.npz", *tok]) == 0
encoded = peak_rss_bytes()
assert main(["decode", folder + "/t.npz", "--out", folder + "/out", *tok]) == 0
print(start, encoded, peak_rss_bytes())
"""


@pytest.mark.slow
def test_a_12_megapixel_photo_round_trips_under_2_gib(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", RSS_CHILD, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=3000)
    assert done.returncode == 0, done.stderr
    # the child's peak before, after encoding and after decoding
    start, encoded, peak = (int(v) >> 20 for v in done.stdout.split()[-3:])
    assert peak < 2 * 1024, f"peak RSS {peak} MiB: {start} before, {encoded} after encoding"
    with Image.open(tmp_path / "out" / "big.png") as image:
        assert image.size == (4000, 3000)
