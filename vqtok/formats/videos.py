"""Videos in, pixels out: an animated GIF or a folder of frame images -> ``(T, H, W, C)``
uint8, through the same per-frame conversion as images (:mod:`vqtok.formats.images`);
and frames out as an animated GIF (:func:`save_gif`).

A *frame folder* is a folder whose image files (:data:`~vqtok.formats.images.IMAGE_SUFFIXES`,
hidden names skipped) are the frames, in the order of their names compared naturally
(``frame2.png`` before ``frame10.png``). Every frame of one video must have the same size;
otherwise, and for an unreadable file, a ValueError names the file and the problem.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import GifImagePlugin, Image, ImageSequence

from vqtok.formats.atomic import atomic_write
from vqtok.formats.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    check_pixels,
    load_image,
    to_uint8_pixels,
)

__all__ = ["VIDEO_SUFFIXES", "frame_files", "gif_bytes", "load_video", "save_gif",
           "video_sources"]

VIDEO_SUFFIXES = frozenset({".gif"})
"""Single files read as videos (every frame of an animated GIF)."""


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


def _read_gif(path: Path, channels: int, max_pixels: int | None) -> np.ndarray:
    try:
        with Image.open(path, formats=("GIF",)) as gif:
            check_pixels(*gif.size, max_pixels, f"{path}: each frame")
            # Pillow composites each GIF frame onto the previous ones (disposal applied), so
            # a converted frame is the picture a viewer shows at that time.
            frames = [to_uint8_pixels(frame.convert("RGBA"), channels)
                      for frame in ImageSequence.Iterator(gif)]
    except ValueError as err:
        if str(err).startswith(f"{path}: "):
            raise
        raise ValueError(f"{path}: cannot read the GIF ({err})") from err
    except Exception as err:  # a damaged file can fail any way inside the decoder
        raise ValueError(f"{path}: cannot read the GIF ({type(err).__name__}: {err})") from err
    _check_same_size([f.shape[1::-1] for f in frames], [str(i) for i in range(len(frames))],
                     str(path))
    return np.stack(frames)


def load_video(source: str | os.PathLike[str], channels: int = 3,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An animated GIF (all its frames) or a frame folder -> ``(T, H, W, channels)`` uint8.

    ``channels`` is 1 (grey, ITU-R 601-2 luma) or 3 (RGB); transparency is composited on
    white as for images. ``max_pixels`` bounds each frame, checked before decoding. Raises
    ValueError with the file's path when it cannot be read, holds no frame, or when frames
    differ in size.
    """
    source = Path(source)
    if source.is_dir():
        files = frame_files(source)
        if not files:
            raise ValueError(f"{source}: a frame folder without one image file")
        frames = [to_uint8_pixels(load_image(f, max_pixels=max_pixels), channels) for f in files]
        _check_same_size([f.shape[1::-1] for f in frames], [f.name for f in files], str(source))
        return np.stack(frames)
    if not source.is_file():
        raise ValueError(f"{source}: no such video file or frame folder")
    if source.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"{source}: not a video (an animated GIF or a folder of frames)")
    return _read_gif(source, channels, max_pixels)


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
    if isinstance(duration_ms, bool) or not isinstance(duration_ms, int) or duration_ms < 10:
        raise ValueError(f"duration_ms must be an int >= 10, got {duration_ms!r}")
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
