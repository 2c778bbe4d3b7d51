"""Moving Fashion-MNIST: short grey clips of one or two Fashion-MNIST sprites that move
with constant velocity and bounce off the edges of the frame, with a caption that names
each sprite's class and direction ("a bag moving up and a shirt moving right").

Generated on the fly from a Fashion-MNIST split (:class:`~vqtok.data.FashionMNIST`, read
from the data cache, docs/data.md): clip ``i`` of a seed is a pure function of
``(seed, split, i)``, so nothing is downloaded and no clip array is held in memory. The
held-out clips draw their sprites from the Fashion-MNIST test split, the training clips
from the train split. The generation rule is in docs/data.md#moving-fashion-mnist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vqtok.data.captions import article, class_name
from vqtok.data.fashion_mnist import CLASSES, FashionMNIST
from vqtok.validation import check_positive

SPRITE = 28
"""Side of a Fashion-MNIST image, the sprite."""

_SPLIT_CODE = {"train": 0, "test": 1}


def bounce(start: int, velocity: int, steps: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and velocities of a point that starts at ``start`` in ``[0, limit]`` and
    moves by ``velocity`` per step, reflected at both walls: when a step would end at
    ``p > limit`` it ends at ``2 * limit - p`` and the velocity changes sign (at ``p < 0``:
    ``-p``). Returns two int arrays of length ``steps``: position and velocity at each step.
    ``|velocity|`` must be at most ``limit`` (a single reflection per step)."""
    if not 0 <= start <= limit:
        raise ValueError(f"start must lie in [0, {limit}], got {start}")
    if abs(velocity) > limit:
        raise ValueError(f"|velocity| must be at most {limit}, got {velocity}")
    positions, velocities = np.empty(steps, np.int64), np.empty(steps, np.int64)
    p, v = start, velocity
    for t in range(steps):
        positions[t], velocities[t] = p, v
        p += v
        if p > limit:
            p, v = 2 * limit - p, -v
        elif p < 0:
            p, v = -p, -v
    return positions, velocities


def motion_word(vx: int, vy: int) -> str:
    """The direction of the dominant velocity component (image axes: ``y`` grows
    downwards): ``left``/``right`` when ``|vx| > |vy|``, ``up``/``down`` when
    ``|vy| > |vx|``; a tie has no dominant component and raises ValueError."""
    if abs(vx) == abs(vy):
        raise ValueError(f"velocity ({vx}, {vy}) has no dominant component")
    if abs(vx) > abs(vy):
        return "right" if vx > 0 else "left"
    return "down" if vy > 0 else "up"


@dataclass(frozen=True)
class Sprite:
    """One sprite of a clip: its Fashion-MNIST image and class, its top-left corner
    ``(x, y)`` at each frame (``(T, 2)``) and its velocity at the first frame."""

    image_index: int
    label: int
    positions: np.ndarray
    velocity: tuple[int, int]

    @property
    def motion(self) -> str:
        return motion_word(*self.velocity)


def caption_for_clip(sprites: list[Sprite]) -> str:
    """``"a sneaker moving left"``, or two such phrases joined by ``" and "``: each
    sprite's class and the direction of its dominant velocity component at the first
    frame (a bounce later reverses it)."""
    phrases = []
    for sprite in sprites:
        noun = class_name(sprite.label)
        phrases.append(f"{article(noun)} {noun} moving {sprite.motion}")
    return " and ".join(phrases)


class MovingFashionMNIST(Dataset):
    """Clips of Fashion-MNIST sprites bouncing in a square frame, with captions.

    Item ``i`` is ``(clip, caption)``: ``clip`` uint8 ``(T, H, W)``, or ``(T, 1, H, W)``
    with ``channel_dim=True``, background 0; ``caption`` a str (:func:`caption_for_clip`).
    Clip ``i`` is fixed by ``(seed, split, i)``: :meth:`sprites` says how it was made.

    Rule (per clip, from a generator seeded by ``(seed, split, i)``): 1 or ``max_sprites``
    sprites (uniformly); each a uniformly drawn image of the split, a top-left corner
    uniform in ``[0, size - 28]^2``, and an integer velocity whose dominant component
    has a speed in ``[min_speed, max_speed]`` on a uniformly chosen axis and sign, the
    other a speed below it with a random sign. Positions follow :func:`bounce`; sprites
    are drawn with the pixel-wise maximum where they overlap.

    Args:
        root: Fashion-MNIST folder; ``None`` for the data cache.
        split: ``"train"`` (sprites from the 60,000 training images) or ``"test"``
            (from the 10,000 test images: held-out clips).
        num_clips: length of the dataset; ``None``: the number of images in the split.
        num_frames: frames per clip (17 = 1 + 4 * 4 fits a 4x temporal tokenizer).
        size: frame side, at least 28 + ``max_speed``.
        max_sprites: 1 or 2.
        min_speed, max_speed: speed range (pixels per frame) of the dominant component.
        seed: selects the set of clips.
        channel_dim: return ``(T, 1, H, W)`` instead of ``(T, H, W)``.
    """

    CLASSES = CLASSES

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 num_clips: int | None = None, num_frames: int = 17, size: int = 64,
                 max_sprites: int = 2, min_speed: int = 2, max_speed: int = 4, seed: int = 0,
                 channel_dim: bool = False) -> None:
        for name, value, low in (("num_frames", num_frames, 1), ("size", size, SPRITE),
                                 ("min_speed", min_speed, 1), ("max_sprites", max_sprites, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if max_sprites > 2:
            raise ValueError(f"max_sprites must be 1 or 2, got {max_sprites}")
        if isinstance(max_speed, bool) or not isinstance(max_speed, int) or max_speed < min_speed:
            raise ValueError(f"max_speed must be an int >= min_speed={min_speed}, got "
                             f"{max_speed!r}")
        if max_speed > size - SPRITE:
            raise ValueError(f"max_speed={max_speed} is over the room the sprite has to move "
                             f"in a {size}x{size} frame ({size - SPRITE} pixels)")
        if split not in _SPLIT_CODE:
            raise ValueError(f"split must be one of {sorted(_SPLIT_CODE)}, got {split!r}")
        source = FashionMNIST(root, split=split, pad_to=None)
        self.images, self.labels = source.images, source.labels  # (N, 28, 28) uint8, (N,)
        if num_clips is None:
            num_clips = len(self.labels)
        check_positive(num_clips=num_clips)
        self.split, self.num_clips, self.num_frames, self.size = split, num_clips, num_frames, size
        self.max_sprites, self.min_speed, self.max_speed = max_sprites, min_speed, max_speed
        self.seed, self.channel_dim = seed, channel_dim

    def __len__(self) -> int:
        return self.num_clips

    def _index(self, index: int) -> int:
        if not -self.num_clips <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for {self.num_clips} clips")
        return index % self.num_clips

    def sprites(self, index: int) -> list[Sprite]:
        """How clip ``index`` is made (class doc)."""
        index = self._index(index)
        rng = np.random.default_rng([self.seed, _SPLIT_CODE[self.split], index])
        limit = self.size - SPRITE
        count = int(rng.integers(1, self.max_sprites + 1))
        sprites = []
        for _ in range(count):
            image = int(rng.integers(len(self.labels)))
            x0, y0 = (int(v) for v in rng.integers(0, limit + 1, size=2))
            fast = int(rng.integers(self.min_speed, self.max_speed + 1))
            slow = int(rng.integers(0, fast))
            fast *= 1 if rng.integers(2) else -1
            slow *= 1 if rng.integers(2) else -1
            vx, vy = (fast, slow) if rng.integers(2) else (slow, fast)
            xs, _ = bounce(x0, vx, self.num_frames, limit)
            ys, _ = bounce(y0, vy, self.num_frames, limit)
            sprites.append(Sprite(image, int(self.labels[image]), np.stack([xs, ys], axis=1),
                                  (vx, vy)))
        return sprites

    def render(self, sprites: list[Sprite]) -> Tensor:
        """The ``(T, size, size)`` uint8 frames of ``sprites``."""
        clip = torch.zeros(self.num_frames, self.size, self.size, dtype=torch.uint8)
        for sprite in sprites:
            picture = self.images[sprite.image_index]
            for t, (x, y) in enumerate(sprite.positions.tolist()):
                window = clip[t, y:y + SPRITE, x:x + SPRITE]
                torch.maximum(window, picture, out=window)
        return clip

    def caption(self, index: int) -> str:
        return caption_for_clip(self.sprites(index))

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        sprites = self.sprites(index)
        clip = self.render(sprites)
        return (clip.unsqueeze(1) if self.channel_dim else clip), caption_for_clip(sprites)
