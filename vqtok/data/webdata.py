"""Training images streamed from webdataset tar shards, local or remote (docs/data.md#webdataset-shards).

:class:`TarImages` reads shards through the webdataset library (its URL openers, tar
reader, sample grouping and shuffle buffer), so any URL it opens works: a local path, a
brace pattern (``shards/{000000..000099}.tar``), ``https://...``, ``pipe:aws s3 cp ...
-``. Each process of a distributed run, and each loader worker in it, reads its own
stream (shards drawn with replacement for training, a disjoint part of the samples for
validation), and every random choice (which shard, the shuffle buffer, each crop and
flip) comes from a generator seeded by ``(seed, epoch, rank, worker)`` or, for a sample's
augmentation, by its index in that stream too. The dataset's state (epoch, samples
served) is what a stateful loader saves; a resumed run re-reads that epoch's stream and
skips the samples already served without decoding them, so it goes on with the samples
it would have drawn (same shards, same ``num_workers``).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from vqtok.extras import require_extra
from vqtok.formats.images import load_image, resize_center_crop, to_uint8_pixels
from vqtok.formats.tars import IMAGE_EXTENSIONS, NamedBytes
from vqtok.tokenizers.pixels import DEFAULT_NORMALIZATION
from vqtok.validation import check_positive

log = logging.getLogger(__name__)


def expand_shards(shards: str | Sequence[str]) -> list[str]:
    """A shard list: brace patterns expanded (``a-{00..02}.tar``), in order."""
    from braceexpand import braceexpand

    patterns = [shards] if isinstance(shards, str) else list(shards)
    urls = [url for pattern in patterns for url in braceexpand(pattern)]
    if not urls:
        raise ValueError(f"no shards in {shards!r}")
    return urls


def random_resized_crop(image: Image.Image, size: int, rng: random.Random,
                        scale: tuple[float, float] = (0.35, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
    """A random crop of ``scale`` of the image's area and aspect ratio in ``ratio`` (drawn
    log-uniformly), scaled to ``size x size`` (bicubic): the augmentation of Szegedy et al.
    2015 (GoogLeNet, section 6) as image classifiers and tokenizers train with it. After
    10 draws that do not fit, the centre crop of the whole image."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.resize((size, size), Image.Resampling.BICUBIC,
                                box=(left, top, left + w, top + h))
    return resize_center_crop(image, size)


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TarImages(IterableDataset):
    """``(image, 0)`` items from webdataset shards (module doc): ``image`` float32
    ``(channels, size, size)`` in [-1, 1].

    Args:
        shards: shard URLs or brace patterns.
        size: the side of each image.
        channels: 3 (RGB) or 1 (grey, Pillow's luma).
        samples: items per epoch and process (split among its loader workers).
        train: random shards (with replacement), a shuffle buffer, random-resized crops
            and horizontal flips; otherwise each shard once, in order, centre crops, and
            process ``r`` of ``W`` (worker ``w`` of ``V``) takes the samples whose index is
            ``(r V + w) mod (W V)``.
        shuffle_buffer: samples held by the shuffle buffer (training).
        min_scale: the smallest crop, as a fraction of the image's area (training).
        seed: the seed of every random choice.
        rank_world: ``(rank, world size)``; default: torch.distributed's, else ``(0, 1)``.
    """

    normalization = DEFAULT_NORMALIZATION

    def __init__(self, shards: str | Sequence[str], size: int, channels: int = 3,
                 samples: int = 10_000, train: bool = True, shuffle_buffer: int = 1000,
                 min_scale: float = 0.35, seed: int = 0,
                 rank_world: tuple[int, int] | None = None) -> None:
        require_extra("shards", "streaming webdataset shards", "webdataset")
        check_positive(size=size, samples=samples, shuffle_buffer=shuffle_buffer)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must lie in (0, 1], got {min_scale!r}")
        self.urls = expand_shards(shards)
        for url in self.urls:  # a local path: fail now, not in an endless stream of retries
            if "://" not in url and not url.startswith("pipe:") and not Path(url).is_file():
                raise FileNotFoundError(f"shard {url} does not exist")
        self.size, self.channels, self.samples, self.train = size, channels, samples, train
        self.shuffle_buffer, self.min_scale, self.seed = shuffle_buffer, min_scale, seed
        self.rank_world = rank_world
        self.epoch = 0
        self.served = 0
        """Samples this process (or worker) served in the current epoch."""

    def __len__(self) -> int:
        return self.samples

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.served = int(state["epoch"]), int(state["served"])

    def _place(self) -> tuple[int, int, int, int]:
        """``(rank, world, worker, workers)``."""
        rank, world = self.rank_world or _rank_and_world()
        info = get_worker_info()
        return rank, world, (info.id if info else 0), (info.num_workers if info else 1)

    def __iter__(self) -> Iterator[tuple[Tensor, int]]:
        import webdataset as wds

        rank, world, worker, workers = self._place()
        share = self.samples // workers + (worker < self.samples % workers)
        key = (self.seed, self.epoch, rank, worker)
        if self.train:
            shard_rng = random.Random(repr(("shards", *key)))
            urls = ({"url": shard_rng.choice(self.urls)} for _ in iter(int, 1))
        else:
            urls = ({"url": url} for url in self.urls)
        stream: Any = wds.tarfile_to_samples(handler=wds.warn_and_continue)(urls)
        if self.train:
            stream = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                                 rng=random.Random(repr(("shuffle", *key))))(stream)
        else:
            slot, slots = rank * workers + worker, world * workers
            stream = (s for i, s in enumerate(stream) if i % slots == slot)
        index = 0
        for sample in stream:
            if index >= share:
                break
            if index < self.served:  # resuming: served before the checkpoint, not decoded
                index += 1
                continue
            image = self._image(sample, random.Random(repr(("augment", *key, index))))
            if image is None:
                continue
            index += 1
            self.served = index
            yield image, 0
        if index < share and not self.train:
            log.info("validation shards hold %d samples for this process, not %d", index,
                     share)
        self.epoch, self.served = self.epoch + 1, 0

    def _image(self, sample: dict[str, Any], rng: random.Random) -> Tensor | None:
        """A sample's image, cropped (and flipped) as the mode says; None (with a warning)
        when it has none or it cannot be read."""
        ext = next((e for e in sorted(sample) if e in IMAGE_EXTENSIONS), None)
        where = f"{sample.get('__url__')}:{sample.get('__key__')}"
        if ext is None:
            log.warning("skipping %s: no image member", where)
            return None
        try:
            image = load_image(NamedBytes(bytes(sample[ext]), f"{where}.{ext}"))
        except ValueError as err:
            log.warning("skipping %s", err)
            return None
        pixels = to_uint8_pixels(image, self.channels)  # (H, W, C) uint8, as training reads
        image = Image.fromarray(pixels[..., 0] if self.channels == 1 else pixels)
        if self.train:
            image = random_resized_crop(image, self.size, rng, scale=(self.min_scale, 1.0))
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            image = resize_center_crop(image, self.size)
        x = torch.from_numpy(np.asarray(image).reshape(self.size, self.size, self.channels)
                             .transpose(2, 0, 1).copy())  # (C, size, size) uint8
        return self.normalization.to_model(x)
