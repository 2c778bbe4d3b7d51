"""Token streams: one vocabulary for text, image codes and markers
(docs/algorithms.md#token-streams).

The vocabulary lays out, in order, the text ids (UTF-8 bytes, ``[0, text_vocab)``), the
image codebook at an offset (``[text_vocab, text_vocab + image_codebook_size)``) and the
special tokens (BOS, EOS, PAD, BOI/EOI around an image, BOV/EOV around a video, and any
extra names given). :func:`build_stream` interleaves text, image grids ``(h, w)`` and video
grids ``(t, h, w)`` into ids, a modality id per token, ``(N, 3)`` positions from a
position scheme and the segment layout; :func:`extract_images` / :func:`extract_videos`
pull grids back out of (generated) ids; :func:`collate` pads a batch with a mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor

from vqtok.lm.positions import Block, PositionScheme, make_scheme
from vqtok.validation import check_positive

REQUIRED_SPECIALS = ("bos", "eos", "pad", "boi", "eoi", "bov", "eov")


class Modality(IntEnum):
    """Modality id of each token in a stream."""

    TEXT = 0
    IMAGE = 1
    VIDEO = 2
    SPECIAL = 3


class Vocabulary:
    """Text bytes, then image codes at ``image_offset``, then the special tokens."""

    def __init__(
        self,
        text_vocab: int = 256,
        *,
        image_codebook_size: int,
        specials: Sequence[str] = REQUIRED_SPECIALS,
    ) -> None:
        check_positive(text_vocab=text_vocab, image_codebook_size=image_codebook_size)
        specials = tuple(specials)
        missing = [s for s in REQUIRED_SPECIALS if s not in specials]
        if missing or len(set(specials)) != len(specials):
            raise ValueError(f"specials must be unique and include {REQUIRED_SPECIALS}; got "
                             f"{specials} (missing {missing})")
        self.text_vocab = int(text_vocab)
        self.image_codebook_size = int(image_codebook_size)
        self.specials = specials
        self.image_offset = self.text_vocab
        self.special_offset = self.text_vocab + self.image_codebook_size
        self.size = self.special_offset + len(specials)

    def special(self, name: str) -> int:
        """Id of the special token ``name``."""
        if name not in self.specials:
            raise ValueError(f"unknown special token {name!r}; known: {self.specials}")
        return self.special_offset + self.specials.index(name)

    bos = property(lambda self: self.special("bos"))
    eos = property(lambda self: self.special("eos"))
    pad = property(lambda self: self.special("pad"))
    boi = property(lambda self: self.special("boi"))
    eoi = property(lambda self: self.special("eoi"))
    bov = property(lambda self: self.special("bov"))
    eov = property(lambda self: self.special("eov"))

    @property
    def image_range(self) -> tuple[int, int]:
        """``[start, stop)`` of the image-code ids."""
        return self.image_offset, self.special_offset

    def is_image_code(self, ids: Tensor) -> Tensor:
        """Boolean mask of the ids that are image codes."""
        return (ids >= self.image_offset) & (ids < self.special_offset)

    def text_ids(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text`` as ids (needs ``text_vocab >= 256``)."""
        data = list(text.encode("utf-8"))
        if data and max(data) >= self.text_vocab:
            raise ValueError(f"text {text!r} has byte {max(data)} >= text_vocab {self.text_vocab}")
        return data

    def decode_text(self, ids: Sequence[int] | Tensor) -> str:
        """The text bytes among ``ids`` decoded as UTF-8 (other ids are skipped)."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return bytes(i for i in values if 0 <= i < min(self.text_vocab, 256)).decode(
            "utf-8", errors="replace")

    def __repr__(self) -> str:
        return (f"Vocabulary(text_vocab={self.text_vocab}, image_codebook_size="
                f"{self.image_codebook_size}, specials={self.specials})")


Segment = str | Sequence[int] | Tensor
"""Text (``str``, encoded as UTF-8 bytes), a list of text/special ids, or an integer grid:
``(h, w)`` image or ``(t, h, w)`` video of codebook indices in ``[0, image_codebook_size)``."""


@dataclass(frozen=True)
class Span:
    """Where one piece of a stream lies: tokens ``[start, stop)``."""

    kind: str
    """``"text"``, ``"special"``, ``"image"`` or ``"video"`` (image/video: the codes only)."""
    start: int
    stop: int
    shape: tuple[int, ...]
    """``(n,)`` for text/special, ``(h, w)`` or ``(t, h, w)`` for grids."""


@dataclass
class Stream:
    """One token stream, ready for the language model."""

    ids: Tensor
    """``(N,)`` int64 vocabulary ids."""
    modality: Tensor
    """``(N,)`` int64 :class:`Modality` of each token."""
    positions: Tensor
    """``(N, 3)`` float32 positions (time, row, column) from the chosen scheme."""
    spans: list[Span]
    """The segment layout, in order."""
    cursor: float
    """The text counter after the last token: the next text token sits at ``cursor + 1``."""


def _check_grid(grid: Tensor, vocab: Vocabulary) -> Tensor:
    if grid.dtype.is_floating_point or grid.dtype.is_complex or grid.dtype == torch.bool:
        raise ValueError(f"a grid must hold integer code ids, got dtype {grid.dtype}")
    if grid.dim() not in (2, 3) or grid.numel() == 0:
        raise ValueError(f"a grid must be a non-empty (h, w) image or (t, h, w) video, got "
                         f"shape {tuple(grid.shape)}")
    lo, hi = int(grid.min()), int(grid.max())
    if lo < 0 or hi >= vocab.image_codebook_size:
        raise ValueError(f"grid ids must lie in [0, {vocab.image_codebook_size}), got values "
                         f"in [{lo}, {hi}]")
    return grid.to(torch.int64).cpu()


def _check_id_list(ids: Sequence[int], vocab: Vocabulary) -> list[int]:
    values = [int(i) for i in ids]
    bad = [i for i in values if not (0 <= i < vocab.text_vocab or vocab.special_offset <= i
                                     < vocab.size)]
    if bad:
        raise ValueError(f"an id list may hold text ids [0, {vocab.text_vocab}) and special ids "
                         f"[{vocab.special_offset}, {vocab.size}); got {bad[:5]}")
    return values


def build_stream(
    segments: Sequence[Segment],
    vocab: Vocabulary,
    scheme: str | PositionScheme = "rope_tie_v2",
    *,
    add_bos: bool = True,
    add_eos: bool = False,
    max_len: int | None = None,
) -> Stream:
    """Interleave ``segments`` into one stream. Images are wrapped in BOI/EOI, videos in
    BOV/EOV; markers and BOS/EOS are one-dimensional tokens like text."""
    scheme = make_scheme(scheme) if isinstance(scheme, str) else scheme
    ids: list[int] = []
    modality: list[int] = []
    spans: list[Span] = []
    blocks: list[Block] = []

    def add_flat(values: list[int], kind: str) -> None:
        spans.append(Span(kind, len(ids), len(ids) + len(values), (len(values),)))
        ids.extend(values)
        modality.extend(Modality.TEXT if v < vocab.text_vocab else Modality.SPECIAL
                        for v in values)
        if blocks and isinstance(blocks[-1], int):
            blocks[-1] += len(values)
        else:
            blocks.append(len(values))

    if add_bos:
        add_flat([vocab.bos], "special")
    for number, segment in enumerate(segments):
        if isinstance(segment, str):
            if not segment:
                raise ValueError(f"segment {number} is an empty string")
            add_flat(vocab.text_ids(segment), "text")
        elif isinstance(segment, Tensor):
            grid = _check_grid(segment, vocab)
            video = grid.dim() == 3
            add_flat([vocab.bov if video else vocab.boi], "special")
            start = len(ids)
            ids.extend((grid.reshape(-1) + vocab.image_offset).tolist())  # raster order
            modality.extend([Modality.VIDEO if video else Modality.IMAGE] * grid.numel())
            spans.append(Span("video" if video else "image", start, len(ids),
                              tuple(grid.shape)))
            blocks.append(tuple(grid.shape))
            add_flat([vocab.eov if video else vocab.eoi], "special")
        elif isinstance(segment, Sequence):
            if len(segment) == 0:
                raise ValueError(f"segment {number} is an empty id list")
            add_flat(_check_id_list(segment, vocab), "text")
        else:
            raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
                f"segment {number} must be str, a list of ids or an integer "
                f"LongTensor grid, got {type(segment).__name__}")
    if add_eos:
        add_flat([vocab.eos], "special")
    if not ids:
        raise ValueError("empty stream: no segments and neither BOS nor EOS")
    if max_len is not None and len(ids) > max_len:
        raise ValueError(f"stream of {len(ids)} tokens is longer than max_len={max_len}")
    positions, cursor = scheme.assign(blocks)
    return Stream(
        ids=torch.tensor(ids, dtype=torch.int64),
        modality=torch.tensor(modality, dtype=torch.int64),
        positions=positions,
        spans=spans,
        cursor=cursor,
    )


def _extract(ids: Tensor | Sequence[int], vocab: Vocabulary, begin: int, end: int,
             shapes: list[tuple[int, ...] | None]) -> list[Tensor]:
    values = ids.tolist() if isinstance(ids, Tensor) else [int(i) for i in ids]
    if isinstance(ids, Tensor) and ids.dim() != 1:
        raise ValueError(f"expected a 1D id sequence, got shape {tuple(ids.shape)}")
    grids: list[Tensor] = []
    pos = 0
    while True:
        try:
            open_at = values.index(begin, pos)
        except ValueError:
            break
        try:
            close_at = values.index(end, open_at + 1)
        except ValueError as err:
            raise ValueError(f"begin marker {begin} at {open_at} has no end marker {end}") from err
        codes = torch.tensor(values[open_at + 1 : close_at], dtype=torch.int64)
        if codes.numel() == 0 or not bool(vocab.is_image_code(codes).all()):
            raise ValueError(f"tokens {open_at + 1}..{close_at - 1} between markers must be "
                             f"non-empty image codes, got {codes[:8].tolist()}")
        shape = shapes[min(len(grids), len(shapes) - 1)]
        if shape is None:  # a square image
            side = math.isqrt(codes.numel())
            if side * side != codes.numel():
                raise ValueError(f"{codes.numel()} codes are not a square grid; pass shape")
            shape = (side, side)
        if math.prod(shape) != codes.numel():
            raise ValueError(f"{codes.numel()} codes between markers do not fill shape {shape}")
        grids.append((codes - vocab.image_offset).reshape(shape))
        pos = close_at + 1
    return grids


def extract_images(ids: Tensor | Sequence[int], vocab: Vocabulary,
                   shape: tuple[int, int] | Sequence[tuple[int, int]] | None = None
                   ) -> list[Tensor]:
    """Every BOI ... EOI grid in ``ids`` as ``(h, w)`` codebook indices, in order. ``shape``
    is one ``(h, w)`` for all images, one per image, or ``None`` for square images."""
    shapes = _as_shape_list(shape, 2)
    return _extract(ids, vocab, vocab.boi, vocab.eoi, shapes)


def extract_videos(ids: Tensor | Sequence[int], vocab: Vocabulary,
                   shape: tuple[int, int, int] | Sequence[tuple[int, int, int]]
                   ) -> list[Tensor]:
    """Every BOV ... EOV grid in ``ids`` as ``(t, h, w)`` codebook indices, in order."""
    return _extract(ids, vocab, vocab.bov, vocab.eov, _as_shape_list(shape, 3))


def _as_shape_list(shape: object, rank: int) -> list[tuple[int, ...] | None]:
    if shape is None:
        if rank == 3:
            raise ValueError("videos need an explicit (t, h, w) shape")
        return [None]
    items = list(shape)  # type: ignore[call-overload]
    if items and all(isinstance(s, int) for s in items):
        items = [tuple(items)]
    if not items or any(len(s) != rank for s in items):
        raise ValueError(f"expected a shape of rank {rank} or a list of them, got {shape}")
    return [tuple(int(v) for v in s) for s in items]


@dataclass
class StreamBatch:
    """Streams of different lengths padded to one ``(B, T)`` batch."""

    ids: Tensor
    """``(B, T)`` ids, PAD where ``mask`` is False."""
    modality: Tensor
    """``(B, T)`` modality ids, SPECIAL on padding."""
    positions: Tensor
    """``(B, T, 3)`` positions, 0 on padding."""
    mask: Tensor
    """``(B, T)`` bool, True on real tokens."""
    cursor: Tensor
    """``(B,)`` float text counter after each stream's last token."""


def collate(streams: Sequence[Stream], vocab: Vocabulary, side: str = "right") -> StreamBatch:
    """Pad ``streams`` with PAD on the ``"right"`` (training) or ``"left"`` (batched
    generation, so that every prompt ends at the last column)."""
    if not streams:
        raise ValueError("collate needs at least one stream, got an empty list")
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    length = max(s.ids.numel() for s in streams)
    batch = len(streams)
    ids = torch.full((batch, length), vocab.pad, dtype=torch.int64)
    modality = torch.full((batch, length), int(Modality.SPECIAL), dtype=torch.int64)
    positions = torch.zeros(batch, length, 3)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for row, s in enumerate(streams):
        n = s.ids.numel()
        cols = slice(0, n) if side == "right" else slice(length - n, length)
        ids[row, cols], modality[row, cols] = s.ids, s.modality
        positions[row, cols], mask[row, cols] = s.positions, True
    cursor = torch.tensor([s.cursor for s in streams], dtype=torch.float64)
    return StreamBatch(ids=ids, modality=modality, positions=positions, mask=mask, cursor=cursor)
