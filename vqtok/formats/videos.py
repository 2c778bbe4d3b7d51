"""Videos in, pixels out: an animated GIF or a folder of frame images -> ``(T, H, W, C)``
uint8, through the same per-frame conversion as images (:mod:`vqtok.formats.images`);
and frames out as an animated GIF (:func:`save_gif`).

A *frame folder* is a folder whose image files (:data:`~vqtok.formats.images.IMAGE_SUFFIXES`,
hidden names skipped) are the frames, in the order of their names compared naturally
(``frame2.png`` before ``frame10.png``). Every frame of one video must have the same size;
otherwise, and for an unreadable file, a ValueError names the file and the problem.

A clip's pixel budget (``max_pixels``, frames x height x width) is checked before any
frame is decoded: a GIF's frame count and canvas come from its block structure
(:func:`gif_layout`), a frame folder's from the image headers. A small file can declare
a large canvas and many frames, and every decoded frame is a full canvas.
"""

from __future__ import annotations

import io
import os
import re
import struct
from pathlib import Path

import numpy as np
from PIL import GifImagePlugin, Image, ImageSequence

from vqtok.formats.atomic import atomic_write
from vqtok.formats.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_FORMATS,
    IMAGE_SUFFIXES,
    TooManyPixelsError,
    load_image,
    to_uint8_pixels,
)

VIDEO_SUFFIXES = frozenset({".gif"})
"""Single files read as videos (every frame of an animated GIF)."""

DEFAULT_MAX_CLIP_PIXELS = 16 * DEFAULT_MAX_PIXELS
"""The largest clip, in pixels over all its frames (33,554,432: 17 frames of 1,400 x
1,400), read, encoded or decoded by default."""


def check_clip_pixels(frames: int, height: int, width: int, max_pixels: int | None,
                      what: str) -> None:
    """A :class:`~vqtok.formats.images.TooManyPixelsError` naming ``what`` when ``frames x
    height x width`` is over ``max_pixels`` (None: no limit)."""
    total = frames * height * width
    if max_pixels is not None and total > max_pixels:
        raise TooManyPixelsError(f"{what} of {frames} frames of {height}x{width} is {total:,} "
                                 f"pixels, over the budget of {max_pixels:,} (--max-pixels "
                                 f"raises it)")


def _natural_key(path: Path) -> list[int | str]:
    return [int(part) if part.isdigit() else part.lower()
            for part in re.split(r"(\d+)", path.name)]


def frame_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The frame images directly inside ``folder``, in natural name order."""
    files = [p for p in Path(folder).iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=_natural_key)


def video_sources(root: str | os.PathLike[str]) -> list[Path]:
    """The videos directly under ``root``: its GIF files and its subfolders that hold at
    least one frame image, sorted by name (hidden names skipped)."""
    root = Path(root)
    found = []
    for entry in sorted(root.iterdir(), key=_natural_key):
        if entry.name.startswith("."):
            continue
        is_gif = entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES
        if is_gif or (entry.is_dir() and frame_files(entry)):
            found.append(entry)
    return found


def _check_same_size(sizes: list[tuple[int, int]], names: list[str], what: str) -> None:
    for size, name in zip(sizes, names):
        if size != sizes[0]:
            raise ValueError(f"{what}: frame {name} is {size[0]}x{size[1]} but frame "
                             f"{names[0]} is {sizes[0][0]}x{sizes[0][1]}; all frames of a video "
                             f"must have one size")


def _skip_sub_blocks(f: io.BufferedIOBase) -> None:
    """Skip a chain of GIF data sub-blocks (a length byte, that many bytes; 0 ends it)."""
    while (length := f.read(1)) and length[0]:
        f.seek(length[0], os.SEEK_CUR)


def gif_layout(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """``(frames, height, width)`` of the frames Pillow decodes from a GIF, from the file's
    block structure alone: no pixel is decoded, memory is constant and time grows with the
    file's size (GIF89a specification, sections 17-27).

    Pillow draws each frame on a canvas of the logical screen's size, grown to hold a frame
    whose image descriptor reaches beyond it, so every decoded frame is that large. Bytes
    between blocks that introduce none are skipped, and the end of the file ends the
    frames, as Pillow does; a block cut short raises ValueError naming the file.
    """
    with open(path, "rb") as f:  # buffered: the one-byte reads cost no system call
        head = f.read(13)
        if len(head) < 13 or head[:6] not in (b"GIF87a", b"GIF89a"):
            raise ValueError(f"{path}: not a GIF file")
        width, height, flags = struct.unpack("<HHB", head[6:11])
        if flags & 0x80:  # the global colour table
            f.seek(3 << ((flags & 7) + 1), os.SEEK_CUR)
        frames = 0
        while (introducer := f.read(1)) and introducer != b";":
            if introducer == b"!":  # an extension: its label, then sub-blocks
                f.read(1)
                _skip_sub_blocks(f)
            elif introducer == b",":  # an image descriptor: one frame
                descriptor = f.read(9)
                if len(descriptor) < 9:
                    raise ValueError(f"{path}: cannot read the GIF (truncated)")
                left, top, w, h, flags = struct.unpack("<HHHHB", descriptor)
                width, height = max(width, left + w), max(height, top + h)
                if flags & 0x80:  # a local colour table
                    f.seek(3 << ((flags & 7) + 1), os.SEEK_CUR)
                f.read(1)  # the LZW code size
                _skip_sub_blocks(f)
                frames += 1
        if f.tell() > os.fstat(f.fileno()).st_size:  # a seek went past the end
            raise ValueError(f"{path}: cannot read the GIF (truncated)")
    return frames, height, width


def _read_gif(path: Path, channels: int, max_pixels: int | None) -> np.ndarray:
    try:
        frames, height, width = gif_layout(path)
        check_clip_pixels(frames, height, width, max_pixels, f"{path}: a clip")
        with Image.open(path, formats=("GIF",)) as gif:
            # Pillow composites each GIF frame onto the previous ones (disposal applied), so
            # a converted frame is the picture a viewer shows at that time.
            pixels = [to_uint8_pixels(frame.convert("RGBA"), channels)
                      for frame in ImageSequence.Iterator(gif)]
    except ValueError as err:
        if str(err).startswith(f"{path}: "):
            raise
        raise ValueError(f"{path}: cannot read the GIF ({err})") from err
    except Exception as err:  # a damaged file can fail any way inside the decoder
        raise ValueError(f"{path}: cannot read the GIF ({type(err).__name__}: {err})") from err
    _check_same_size([f.shape[1::-1] for f in pixels], [str(i) for i in range(len(pixels))],
                     str(path))
    return np.stack(pixels)


def _frame_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header, nothing decoded."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            return image.size
    except Exception as err:  # a damaged file can fail any way inside a decoder
        raise ValueError(f"{path}: cannot read the image ({type(err).__name__}: {err})"
                         ) from err


def load_video(source: str | os.PathLike[str], channels: int = 3,
               max_pixels: int | None = DEFAULT_MAX_CLIP_PIXELS) -> np.ndarray:
    """An animated GIF (all its frames) or a frame folder -> ``(T, H, W, channels)`` uint8.

    ``channels`` is 1 (grey, ITU-R 601-2 luma) or 3 (RGB); transparency is composited on
    white as for images. ``max_pixels`` bounds the clip, frames x height x width, checked
    before any frame is decoded (module doc; None: no limit). Raises ValueError with the
    file's path when it cannot be read, holds no frame, is over the budget, or when frames
    differ in size.
    """
    source = Path(source)
    if source.is_dir():
        files = frame_files(source)
        if not files:
            raise ValueError(f"{source}: a frame folder without one image file")
        width, height = max((_frame_size(f) for f in files), key=lambda s: s[0] * s[1])
        check_clip_pixels(len(files), height, width, max_pixels, f"{source}: a clip")
        frames = [to_uint8_pixels(load_image(f, max_pixels=max_pixels), channels) for f in files]
        _check_same_size([f.shape[1::-1] for f in frames], [f.name for f in files], str(source))
        return np.stack(frames)
    if not source.is_file():
        raise ValueError(f"{source}: no such video file or frame folder")
    if source.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"{source}: not a video (an animated GIF or a folder of frames)")
    return _read_gif(source, channels, max_pixels)


MAX_FRAME_MS = 655_350
"""The longest GIF frame: a GIF stores each frame's duration in centiseconds in 16 bits."""


def check_frame_ms(duration_ms: int) -> None:
    """A ValueError unless ``duration_ms`` is a GIF frame duration: an int in [10,
    :data:`MAX_FRAME_MS`] (GIF89a section 23: a delay in hundredths of a second, 16 bits)."""
    if isinstance(duration_ms, bool) or not isinstance(duration_ms, int) or not (
            10 <= duration_ms <= MAX_FRAME_MS):
        raise ValueError(f"a GIF frame lasts 10 to {MAX_FRAME_MS:,} ms (hundredths of a "
                         f"second in 16 bits), got {duration_ms!r} (--frame-ms)")


def gif_bytes(frames: np.ndarray, duration_ms: int = 100, loop: int = 0) -> bytes:
    """``(T, H, W)`` or ``(T, H, W, C)`` uint8 frames (C = 1 grey, 3 RGB) -> the bytes
    of an animated GIF with exactly T frames of ``duration_ms`` each (``loop`` 0: forever).

    Grey frames are stored exactly (a 256-level grey palette). RGB frames share one
    palette of at most 256 colours, fitted to all frames at once (median cut, no dither),
    so RGB is approximate, as any GIF is. Frames are written one by one: Pillow's own
    writer would merge a frame equal to the one before it, and the clip would lose frames.
    """
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim not in (
            3, 4) or 0 in frames.shape or (frames.ndim == 4 and frames.shape[3] not in (1, 3)):
        shape = getattr(frames, "shape", None)
        raise ValueError(f"expected uint8 frames (T, H, W) or (T, H, W, C) with C in (1, 3), "
                         f"got {type(frames).__name__} of shape {shape}")
    check_frame_ms(duration_ms)
    if frames.ndim == 4 and frames.shape[3] == 1:
        frames = frames[..., 0]
    if frames.ndim == 3:
        images = [Image.fromarray(frame, "L") for frame in frames]
    else:  # one palette for every frame, fitted to all of them stacked
        palette = Image.fromarray(frames.reshape(-1, *frames.shape[2:]), "RGB").quantize(
            256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        images = [Image.fromarray(frame, "RGB").quantize(palette=palette,
                                                         dither=Image.Dither.NONE)
                  for frame in frames]
    out = io.BytesIO()
    header, _ = GifImagePlugin.getheader(images[0], info={"loop": loop, "duration": duration_ms})
    for chunk in header:
        out.write(chunk)
    for image in images:
        for chunk in GifImagePlugin.getdata(image, offset=(0, 0), duration=duration_ms,
                                            disposal=1):
            out.write(chunk)
    out.write(b";")  # the GIF trailer
    return out.getvalue()


def save_gif(frames: np.ndarray, path: str | os.PathLike[str], duration_ms: int = 100,
             loop: int = 0) -> Path:
    """Write :func:`gif_bytes` to ``path`` atomically (a temporary file renamed into
    place); returns the path."""
    data = gif_bytes(frames, duration_ms, loop)
    return atomic_write(path, lambda f: f.write(data))
