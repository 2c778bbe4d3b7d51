"""Moving Fashion-MNIST: determinism, bouncing against a closed form, captions against the
pixels, and the real split when it is present."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import needs_fashion_mnist
from tests.training.test_data import FILE_NAMES, idx_bytes
from vqtok.data import FashionMNIST, MovingFashionMNIST
from vqtok.data.moving_fmnist import bounce, motion_word

NOUNS = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
         "bag", "ankle boot"]


def write_sprites(root: Path, n_train: int = 20, n_test: int = 6, seed: int = 0) -> None:
    """Fake Fashion-MNIST whose every pixel is non-zero, so a sprite's box is visible."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for name, array in zip(FILE_NAMES[split], (images, labels)):
            (root / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_sprites(tmp_path / "fm")
    return tmp_path / "fm"


def folded(start: int, velocity: int, t: int, limit: int) -> int:
    """Closed form of a reflected walk: unfold the walls into a line of period 2 * limit."""
    r = (start + velocity * t) % (2 * limit)
    return r if r <= limit else 2 * limit - r


def test_bounce_matches_hand_computation() -> None:
    # 34 + 3 = 37 is 1 past the wall at 36: back to 35, moving -3.
    positions, velocities = bounce(34, 3, 5, 36)
    assert positions.tolist() == [34, 35, 32, 29, 26]
    assert velocities.tolist() == [3, -3, -3, -3, -3]
    positions, velocities = bounce(1, -2, 4, 36)  # 1 - 2 = -1 -> 1
    assert positions.tolist() == [1, 1, 3, 5] and velocities.tolist() == [-2, 2, 2, 2]
    assert bounce(35, 1, 3, 36)[0].tolist() == [35, 36, 35]  # touching the wall is inside
    for start, velocity in ((0, 4), (36, -4), (17, 3), (5, -1)):
        assert bounce(start, velocity, 60, 36)[0].tolist() == [
            folded(start, velocity, t, 36) for t in range(60)]
    with pytest.raises(ValueError, match="velocity"):
        bounce(0, 40, 3, 36)


def test_motion_word_is_the_dominant_component() -> None:
    assert motion_word(-3, 1) == "left" and motion_word(4, -3) == "right"
    assert motion_word(0, -2) == "up" and motion_word(1, 2) == "down"  # y grows downwards
    with pytest.raises(ValueError, match="dominant"):
        motion_word(2, -2)


def test_same_seed_same_clips_any_order(root: Path) -> None:
    a = MovingFashionMNIST(root, num_clips=12, seed=3)
    b = MovingFashionMNIST(root, num_clips=12, seed=3)
    forward = [a[i] for i in range(12)]
    backward = [b[i] for i in reversed(range(12))][::-1]
    for (clip_a, cap_a), (clip_b, cap_b) in zip(forward, backward):
        assert clip_a.dtype == torch.uint8 and clip_a.shape == (17, 64, 64)
        assert torch.equal(clip_a, clip_b) and cap_a == cap_b
    other = MovingFashionMNIST(root, num_clips=12, seed=4)
    assert not all(torch.equal(other[i][0], forward[i][0]) for i in range(12))
    held_out = MovingFashionMNIST(root, split="test", num_clips=12, seed=3)
    assert not all(torch.equal(held_out[i][0], forward[i][0]) for i in range(12))


def test_sprites_stay_inside_and_bounce(root: Path) -> None:
    data = MovingFashionMNIST(root, num_clips=40, num_frames=30, seed=0)
    counts, bounced = set(), 0
    for i in range(len(data)):
        sprites = data.sprites(i)
        counts.add(len(sprites))
        clip, _ = data[i]
        for sprite in sprites:
            xs, ys = sprite.positions[:, 0], sprite.positions[:, 1]
            assert xs.min() >= 0 and ys.min() >= 0 and xs.max() <= 36 and ys.max() <= 36
            assert xs.tolist() == [folded(xs[0], sprite.velocity[0], t, 36) for t in range(30)]
            assert ys.tolist() == [folded(ys[0], sprite.velocity[1], t, 36) for t in range(30)]
            bounced += int(np.any(np.diff(np.sign(np.diff(xs))) != 0))
            speed = max(abs(v) for v in sprite.velocity)
            assert 2 <= speed <= 4 and abs(sprite.velocity[0]) != abs(sprite.velocity[1])
        # The frame holds the sprites (all their pixels are non-zero here) and nothing else.
        expected = torch.zeros(30, 64, 64, dtype=torch.bool)
        for sprite in sprites:
            for t, (x, y) in enumerate(sprite.positions):
                expected[t, y:y + 28, x:x + 28] = True
        assert torch.equal(clip > 0, expected)
    assert counts == {1, 2} and bounced > 0


def test_captions_name_class_and_direction(root: Path) -> None:
    data = MovingFashionMNIST(root, num_clips=60, seed=1)
    labels = np.arange(20) % 10
    checked = 0
    for i in range(len(data)):
        clip, caption = data[i]
        sprites = data.sprites(i)
        phrases = caption.split(" and ")
        assert len(phrases) == len(sprites)
        for phrase, sprite in zip(phrases, sprites):
            noun = NOUNS[labels[sprite.image_index]]
            vx, vy = sprite.velocity
            word = (("right" if vx > 0 else "left") if abs(vx) > abs(vy)
                    else ("down" if vy > 0 else "up"))
            assert phrase == f"{'an' if noun == 'ankle boot' else 'a'} {noun} moving {word}"
        if len(sprites) == 1 and all(4 <= p <= 32 for p in sprites[0].positions[0]):
            # Away from the walls, the first step moves the box by the velocity: read the
            # direction off the pixels.
            boxes = []
            for t in (0, 1):
                rows = torch.nonzero(clip[t].any(1)).flatten()
                cols = torch.nonzero(clip[t].any(0)).flatten()
                boxes.append((int(cols[0]), int(rows[0])))
            dx, dy = boxes[1][0] - boxes[0][0], boxes[1][1] - boxes[0][1]
            word = (("right" if dx > 0 else "left") if abs(dx) > abs(dy)
                    else ("down" if dy > 0 else "up"))
            assert caption.endswith(f"moving {word}")
            checked += 1
    assert checked >= 5


def test_shapes_and_bad_arguments(root: Path) -> None:
    data = MovingFashionMNIST(root, num_clips=3, num_frames=5, size=40, channel_dim=True,
                              max_sprites=1)
    assert data[0][0].shape == (5, 1, 40, 40) and len(data) == 3
    assert len(MovingFashionMNIST(root, split="test")) == 6  # one clip per split image
    with pytest.raises(IndexError):
        data[3]
    with pytest.raises(ValueError, match="max_speed"):
        MovingFashionMNIST(root, size=30, max_speed=4)
    with pytest.raises(ValueError, match="split"):
        MovingFashionMNIST(root, split="val")
    with pytest.raises(ValueError, match="max_sprites"):
        MovingFashionMNIST(root, max_sprites=3)


@needs_fashion_mnist
def test_real_split_sprites_are_fashion_mnist_images() -> None:
    for split, n in (("train", 60000), ("test", 10000)):
        data = MovingFashionMNIST(split=split, seed=0)
        assert len(data) == n
        images = FashionMNIST(split=split, pad_to=None)
        for i in range(20):
            sprites = data.sprites(i)
            if len(sprites) != 1:
                continue
            clip, caption = data[i]
            (x, y), image = sprites[0].positions[0], sprites[0].image_index
            assert torch.equal(clip[0, y:y + 28, x:x + 28], images.images[image])
            assert NOUNS[int(images.labels[image])] in caption
