"""The trained models shipped in checkpoints/: they load, and they still do what
checkpoints/README.md says, measured here on held-out data with numpy PSNR."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import needs_fashion_mnist
from vqtok import ImageTokenizer, VideoTokenizer
from vqtok.data import MovingFashionMNIST, read_idx
from vqtok.data.fashion_mnist import default_root, find_file
from vqtok.formats.tokenizer_dir import fingerprint
from vqtok.lm.lm_dir import load_lm_dir

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
PHOTOS = ROOT / "vqtok" / "data" / "photos" / "test"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all pixels of two uint8 arrays (data range 255), in float64."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10.0 * np.log10(255.0**2 / mse))


def test_every_checkpoint_loads_and_is_checksummed() -> None:
    dirs = sorted(p for p in CHECKPOINTS.iterdir() if p.is_dir())
    assert {p.name for p in dirs} >= {"fmnist_fsq", "photos_fsq", "decoder_fmnist",
                                      "moving_fmnist_video"}
    for path in dirs:
        config = json.loads((path / "config.json").read_text())
        digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
        assert config["weights_sha256"] == digest, path.name
        fmt = config["format"]
        if fmt == "vqtok.tokenizer":
            kind = VideoTokenizer if "video" in config else ImageTokenizer
            assert kind.from_pretrained(path).codebook_size > 1
        else:
            assert fmt == "vqtok.decoder", path
            load_lm_dir(path)


def test_decoder_fmnist_writes_the_token_grid_of_fmnist_fsq() -> None:
    tokenizer = ImageTokenizer.from_pretrained(CHECKPOINTS / "fmnist_fsq")
    _, vocab, config = load_lm_dir(CHECKPOINTS / "decoder_fmnist")
    # the tokenizer it records is the shipped one (vqtok generate warns otherwise)
    assert config["extra"]["tokenizer"]["sha256"] == fingerprint(CHECKPOINTS / "fmnist_fsq")
    assert vocab.image_codebook_size == tokenizer.codebook_size
    assert tuple(config["image_tokens"]) == tokenizer.tokens_shape(32, 32)


@needs_fashion_mnist
def test_fmnist_fsq_on_held_out_test_images() -> None:
    """README: 23.9 dB validation PSNR on 32 x 32 padded images, 98% of the codes used.
    Here: the first 500 test images, padded as in training (2 black pixels a side)."""
    images = read_idx(find_file(default_root(), "t10k-images-idx3-ubyte"))[:500]  # (500, 28, 28)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    tokenizer = ImageTokenizer.from_pretrained(CHECKPOINTS / "fmnist_fsq")
    ids = tokenizer.encode([Image.fromarray(image) for image in padded])
    assert tuple(ids.shape) == (500, 8, 8)
    decoded = np.stack([np.asarray(image) for image in tokenizer.decode(ids)])[:, 2:30, 2:30]
    assert psnr(decoded, images) > 22.0  # measured 22.7 dB
    assert np.unique(ids.numpy()).size > 900  # of 1,000 codes; measured 945


@pytest.mark.parametrize("name", ["china.png", "flower.png"])
def test_photos_fsq_on_whole_held_out_photos(name: str) -> None:
    """README: 20.7 and 22.6 dB on the whole photos (it trained on 32 x 32 crops)."""
    tokenizer = ImageTokenizer.from_pretrained(CHECKPOINTS / "photos_fsq")
    image = Image.open(PHOTOS / name).convert("RGB")
    ids, sizes = tokenizer.encode_with_sizes([image])
    assert tuple(ids.shape) == (1, 107, 160)
    (decoded,) = tokenizer.decode(ids, sizes)
    assert decoded.size == image.size
    assert psnr(np.asarray(decoded), np.asarray(image)) > 20.0


VIDEO_PSNR_FLOOR = 20.5  # dB; the lowest frame mean measured on these clips is in checkpoints/README.md


@needs_fashion_mnist
def test_moving_fmnist_video_on_held_out_clips() -> None:
    """README: the round trip of held-out clips (sprites from the test split, a seed the
    run never saw): shapes exact, PSNR per frame above the floor below, and the first
    frame's ids equal to the one-frame (image) path's."""
    tokenizer = VideoTokenizer.from_pretrained(CHECKPOINTS / "moving_fmnist_video")
    clips = MovingFashionMNIST(split="test", num_clips=8, seed=1)
    per_frame = []
    for i in range(len(clips)):
        clip = clips[i][0].numpy()[..., None]  # (17, 64, 64, 1)
        ids = tokenizer.encode(clip)
        assert tuple(ids.shape) == (5, 8, 8)
        assert np.array_equal(ids[0].numpy(), tokenizer.encode_image(clip[0]).numpy())
        back = tokenizer.decode(ids)
        assert back.shape == clip.shape
        per_frame.append([psnr(back[t], clip[t]) for t in range(17)])
    mean = np.mean(per_frame, axis=0)
    assert mean.min() > VIDEO_PSNR_FLOOR, mean.round(2).tolist()

