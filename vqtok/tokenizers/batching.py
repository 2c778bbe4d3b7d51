"""How images are batched for encoding: the padded size an image runs at, the fixed batch
of small images of one size, and buckets that hold images until a batch of one size is
full. :class:`~vqtok.tokenizers.image.ImageTokenizer` and ``vqtok encode``
(:mod:`vqtok.apps.files`) both plan their batches with a :class:`BatchPlanner`, so a
forward pass never mixes padded sizes and small images always meet the same kernels (the
determinism rules of :mod:`vqtok.tokenizers.image`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from vqtok.validation import check_positive

Size = tuple[int, int]
"""(height, width) in pixels."""

BATCH_PIXELS = 1 << 16
"""Pixels per fixed batch of small images: 64 images of 32 x 32."""
MAX_FIXED_BATCH = 64
"""The largest fixed batch."""

T = TypeVar("T")


def check_batch_size(batch_size: int) -> None:
    """A ValueError unless ``batch_size`` is a positive int."""
    check_positive(batch_size=batch_size)


class BatchPlanner:
    """The batches of a model that downsamples by ``downsample_factor``.

    Args:
        downsample_factor: pixels per token along each side; images are padded at the
            bottom/right up to a multiple of it.
        fixed_batches: whether small images run in fixed batches (batch-invariant kernels
            on the CPU); otherwise every size runs in batches of the caller's size.
    """

    def __init__(self, downsample_factor: int, fixed_batches: bool) -> None:
        self.downsample_factor = int(downsample_factor)
        self.fixed_batches = bool(fixed_batches)

    def padded(self, height: int, width: int) -> Size:
        """The size an ``height x width`` image runs at: each side rounded up to a multiple
        of the downsampling factor."""
        f = self.downsample_factor
        return (math.ceil(height / f) * f, math.ceil(width / f) * f)

    def fixed_batch(self, height: int, width: int) -> int | None:
        """Images per pass for a padded ``height x width`` size when such images run in a
        fixed batch, ``min(64, BATCH_PIXELS // (height * width))``, else None (larger
        images, or no fixed batches: per-sample kernels)."""
        if not self.fixed_batches:
            return None
        size = min(MAX_FIXED_BATCH, BATCH_PIXELS // (height * width))
        return size if size >= 2 else None

    def by_size(self, sizes: Sequence[Size]) -> dict[Size, list[int]]:
        """Indices of ``sizes`` grouped by padded size, in order of first appearance."""
        groups: dict[Size, list[int]] = {}
        for i, (height, width) in enumerate(sizes):
            groups.setdefault(self.padded(height, width), []).append(i)
        return groups

    def chunk_full(self, count: int, pixels: int, batch_size: int) -> bool:
        """Whether ``count`` images of ``pixels`` pixels in all make a chunk to encode:
        ``batch_size`` of them, and either a full fixed batch or :data:`BATCH_PIXELS`
        pixels, so that no fixed batch is filled with blanks needlessly."""
        return count >= batch_size and (count >= MAX_FIXED_BATCH or pixels >= BATCH_PIXELS)

    def buckets(self, batch_size: int) -> SizeBuckets:
        """Empty :class:`SizeBuckets` for batches of ``batch_size``."""
        check_batch_size(batch_size)
        return SizeBuckets(self, batch_size)


class SizeBuckets(Generic[T]):
    """Items wait in one bucket per padded size until it holds a batch: ``batch_size``
    items, or the fixed batch of that size (:meth:`BatchPlanner.fixed_batch`)."""

    def __init__(self, planner: BatchPlanner, batch_size: int) -> None:
        self.planner = planner
        self.batch_size = batch_size
        self._buckets: dict[Size, list[T]] = {}

    def add(self, height: int, width: int, item: T) -> list[T] | None:
        """Put ``item``, an image of ``height x width`` pixels, in its bucket; the bucket's
        items when that makes a batch (the bucket is then emptied), else None."""
        key = self.planner.padded(height, width)
        bucket = self._buckets.setdefault(key, [])
        bucket.append(item)
        if len(bucket) >= (self.planner.fixed_batch(*key) or self.batch_size):
            return self._buckets.pop(key)
        return None

    def waiting(self) -> Iterator[T]:
        """The items not yet handed out."""
        for bucket in self._buckets.values():
            yield from bucket

    def drain(self) -> Iterator[list[T]]:
        """Every bucket's items, bucket by bucket, emptying them."""
        for key in list(self._buckets):
            yield self._buckets.pop(key)
