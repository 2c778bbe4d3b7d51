"""VideoTokenizer on a small randomly initialised causal model: input forms, shapes,
causality and the image path through the public API, the directory format and its
refusal of the other tokenizer kind, GIF frames, and one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqtok import ImageTokenizer, TokenizerFormatError, VideoTokenizer, load_tokenizer
from vqtok.formats.videos import gif_bytes, load_video, save_gif
from vqtok.models import VideoDecoder, VideoEncoder, VQAutoencoder
from vqtok.quantizers import FSQ
from vqtok.tokenizers.load import ImageOptionError

ROOT = Path(__file__).resolve().parents[1]
KW = {"channels": 4, "channel_mult": (1, 2, 2, 2), "dim": 4, "num_groups": 2,
      "per_frame_levels": 1}


def video_model(channels: int = 1) -> VQAutoencoder:
    torch.manual_seed(0)
    return VQAutoencoder(VideoEncoder(in_channels=channels, **KW),
                         FSQ(levels=[5, 5, 5, 5], dim=4),
                         VideoDecoder(out_channels=channels, **KW))


@pytest.fixture(scope="module")
def tokenizer() -> VideoTokenizer:
    return VideoTokenizer(video_model())


def clip(frames: int = 17, size: int = 32, seed: int = 0) -> np.ndarray:
    """A grey clip (T, H, W, 1): a bright square moving right over noise."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (frames, size, size, 1), dtype=np.uint8)
    for t in range(frames):
        x[t, 8:16, t % (size - 8):t % (size - 8) + 8] = 220
    return x


@pytest.mark.parametrize("frames", [1, 5, 17])
def test_shapes_for_1_5_and_17_frames(tokenizer: VideoTokenizer, frames: int) -> None:
    ids = tokenizer.encode(clip(frames))
    t = 1 + (frames - 1) // 4
    assert tuple(ids.shape) == (t, 4, 4) == tokenizer.tokens_shape(frames, 32, 32)
    assert ids.dtype == torch.int64
    decoded = tokenizer.decode(ids)
    assert decoded.shape == (frames, 32, 32, 1) and decoded.dtype == np.uint8


def test_every_input_form_gives_the_same_ids(tokenizer: VideoTokenizer, tmp_path: Path) -> None:
    x = clip(9)
    want = tokenizer.encode(x)
    assert torch.equal(tokenizer.encode(x[..., 0]), want)  # (T, H, W)
    assert torch.equal(tokenizer.encode([Image.fromarray(f[..., 0]) for f in x]), want)
    assert torch.equal(tokenizer.encode(x.astype(np.float32) / 255.0), want)
    gif = tmp_path / "clip.gif"
    save_gif(x, gif)  # grey GIFs keep every pixel
    assert torch.equal(tokenizer.encode(gif), want)
    assert torch.equal(tokenizer.encode(str(gif)), want)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(x):
        Image.fromarray(frame[..., 0]).save(folder / f"frame{t}.png")
    assert torch.equal(tokenizer.encode(folder), want)
    batch = tokenizer.encode_batch([x, clip(9, seed=1), x])
    assert tuple(batch.shape) == (3, 3, 4, 4)
    assert torch.equal(batch[0], want) and torch.equal(batch[2], want)


def test_first_frame_tokens_are_the_image_path_tokens(tokenizer: VideoTokenizer) -> None:
    """The image path: a picture encoded as a one-frame clip (``encode_image``)."""
    for frames in (5, 17):
        x = clip(frames, seed=frames)
        ids = tokenizer.encode(x)
        image = Image.fromarray(x[0, ..., 0])
        assert torch.equal(ids[0], tokenizer.encode_image(image))
        assert torch.equal(ids[0], tokenizer.encode_image(x[0]))
        assert torch.equal(ids[:1], tokenizer.encode(x[:1]))


def test_changing_frame_j_never_changes_the_ids_of_earlier_latent_frames(
        tokenizer: VideoTokenizer) -> None:
    x = clip(17)
    base = tokenizer.encode(x)
    rng = np.random.default_rng(5)
    changed_somewhere = 0
    for j in range(17):
        y = x.copy()
        y[j] = rng.integers(0, 256, y[j].shape, dtype=np.uint8)
        ids = tokenizer.encode(y)
        kept = math.ceil(j / 4)  # latent frames made of frames before j only
        assert torch.equal(ids[:kept], base[:kept]), j
        changed_somewhere += int(not torch.equal(ids[kept:], base[kept:]))
    assert changed_somewhere > 12  # the change does reach the later ids


def test_save_and_load_give_the_same_ids_and_the_kinds_are_kept_apart(
        tokenizer: VideoTokenizer, tmp_path: Path) -> None:
    saved = tokenizer.save_pretrained(tmp_path / "video", extra={"note": "test"})
    config = (saved / "config.json").read_text()
    assert '"video": {' in config and '"temporal_factor": 4' in config
    loaded = VideoTokenizer.from_pretrained(saved)
    x = clip(5)
    assert torch.equal(loaded.encode(x), tokenizer.encode(x))
    assert np.array_equal(loaded.decode(loaded.encode(x)), tokenizer.decode(tokenizer.encode(x)))
    with pytest.raises(TokenizerFormatError, match=r"is a video tokenizer; load it with "
                                                   r"vqtok.VideoTokenizer") as err:
        ImageTokenizer.from_pretrained(saved)
    assert "\n" not in str(err.value)
    with pytest.raises(TokenizerFormatError, match=r"is an image tokenizer; load it with "
                                                   r"vqtok.ImageTokenizer") as err:
        VideoTokenizer.from_pretrained(ROOT / "checkpoints" / "fmnist_fsq")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="use vqtok.VideoTokenizer"):
        ImageTokenizer(video_model())


@pytest.mark.parametrize("name, kind", [("fmnist_fsq", ImageTokenizer),
                                        ("photos_fsq", ImageTokenizer),
                                        ("moving_fmnist_video", VideoTokenizer)])
def test_load_tokenizer_gives_the_kind_of_the_shipped_checkpoints(name: str, kind: type
                                                                  ) -> None:
    path = ROOT / "checkpoints" / name
    found = load_tokenizer(path, max_pixels="auto")
    assert type(found) is kind
    expected = kind.from_pretrained(path)
    assert (found.max_pixels, found.normalization) == (expected.max_pixels,
                                                       expected.normalization)
    if kind is ImageTokenizer:
        assert (found.min_size, found.tile_size) == (expected.min_size, expected.tile_size)


def test_load_tokenizer_refuses_image_options_for_a_video_tokenizer() -> None:
    path = ROOT / "checkpoints" / "moving_fmnist_video"
    with pytest.raises(ImageOptionError, match="^tile_size: a video tokenizer does not run on "
                                               "tiles$"):
        load_tokenizer(path, tile_size=64)
    with pytest.raises(ImageOptionError, match="^compile: "):
        load_tokenizer(path, compile=True)


def test_rgb_clips(tmp_path: Path) -> None:
    tok = VideoTokenizer(video_model(channels=3))
    x = np.repeat(clip(5), 3, axis=3)
    ids = tok.encode(x)
    assert tuple(ids.shape) == (2, 4, 4)
    assert tok.decode(ids).shape == (5, 32, 32, 3)
    assert torch.equal(tok.encode(x[..., :1]), ids)  # grey input repeated to RGB


@pytest.mark.parametrize(("bad", "message"), [
    (lambda: clip(6), (r"a clip of 6 frames: this tokenizer takes 1 \+ 4k \(1, 5, 9, 13, 17, "
                       r"\.\.\.\) frames; drop the last 1")),
    (lambda: clip(5, size=30), r"frames of 30x30 pixels .* multiples of 8"),
    (lambda: [Image.new("L", (32, 32)), Image.new("L", (16, 32))], "frames differ in size"),
    (list, "non-empty list of PIL images"),
    (lambda: 3, "expected a clip as a list of PIL images"),
    (lambda: np.zeros((5, 32), np.uint8), r"expected a clip array \(T, H, W, C\)"),
    (lambda: "no/such/clip.gif", "no such video file"),
])
def test_bad_clips_give_one_line_errors(tokenizer: VideoTokenizer, bad, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        tokenizer.encode(bad())
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("ids", "message"), [
    (torch.full((2, 4, 4), 625), r"token ids must lie in \[0, 625\), got values in \[625, 625\]"),
    (torch.full((2, 4, 4), -1), r"must lie in \[0, 625\)"),
    (torch.zeros(4, 4, dtype=torch.int64), r"expected ids of shape \(t, h, w\)"),
    (torch.zeros(2, 4, 4), "expected integer token ids"),
    (np.zeros((2, 4, 4), np.float32), "expected integer token ids"),
    ([[0]], "expected token ids as a tensor"),
])
def test_bad_ids_give_one_line_errors(tokenizer: VideoTokenizer, ids, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        tokenizer.decode(ids)
    assert "\n" not in str(err.value)


def test_the_clip_budget_is_checked_before_the_model_runs() -> None:
    tok = VideoTokenizer(video_model(), max_pixels=4 * 32 * 32)
    with pytest.raises(ValueError, match=r"5 frames of 32x32 is 5,120 pixels, over the budget"):
        tok.encode(clip(5))
    with pytest.raises(ValueError, match="over the budget"):
        tok.decode(torch.zeros(2, 4, 4, dtype=torch.int64))


def test_gif_keeps_every_frame_even_repeated_ones(tmp_path: Path) -> None:
    x = clip(5)
    x[2] = x[1]  # Pillow's own writer would merge these two
    path = save_gif(x, tmp_path / "a.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.info["loop"] == 0
    assert np.array_equal(load_video(path, channels=1), x)
    with pytest.raises(ValueError, match="expected uint8 frames"):
        gif_bytes(x.astype(np.float32))
