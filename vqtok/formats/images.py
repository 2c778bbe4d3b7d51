"""Images in, pixels out: the one conversion path of training data and inference alike.

vqtok works on 8-bit pixels. Whatever the source (an image file, a PIL image of any mode,
a numpy array), :func:`to_uint8_pixels` turns it into ``(H, W, C)`` uint8 with ``C`` the
model's channels, in one way (docs/formats.md#pixels):

* 16-bit values (PIL ``I;16*``/``I``, numpy uint16) become ``round(v / 257)``, so
  ``v * 257`` gives back ``v``; PIL's ``F`` mode is read as 0..255; float arrays in [0, 1]
  become ``round(v * 255)``.
* Transparency is composited on white; palette, CMYK and the other modes go through
  Pillow's own conversion to RGB; grey is repeated to RGB, and RGB goes to grey with
  Pillow's ITU-R 601-2 luma ("L").

The datasets, the tokenizers and the report all read images through this module; what a
model then sees of the pixels (normalisation, padding) is :mod:`vqtok.tokenizers.pixels`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# Raster formats only: Pillow's EPS/PS plugins run Ghostscript, and some plugins are stubs.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "TGA", "QOI", "JPEG2000",
                 "ICO", "PCX", "SGI", "PSD", "AVIF")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif",
                            ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi",
                            ".jp2", ".j2k", ".ico", ".pcx", ".sgi", ".psd", ".avif"})
DEFAULT_MAX_PIXELS = 1 << 21
"""The pixel budget of one image (2,097,152 pixels: 2048 x 1024, a 1920 x 1080 frame fits),
checked before an image is decoded or allocated. Encoding a whole image of that size with
``checkpoints/photos_fsq`` peaks near 3.5 GiB and decoding one near 6 GiB
(measured at 1 and 4 megapixels); ``None`` lifts the limit. It is the default of
models that cannot run on tiles (:data:`TILED_MAX_PIXELS` is that of the others)."""
TILED_MAX_PIXELS = 1 << 26
"""The pixel budget of one image for a tokenizer that runs its model on tiles
(67,108,864 pixels: 8192 x 8192). The model's memory no longer grows with the image, but
the image itself does: at this size its float32 copy alone takes 0.8 GB."""

_NOT_FINITE = ("a float image (PIL mode F) holding NaN or infinite values; pixels must be "
               "finite")
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def image_files(root: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``root``, recursively: a suffix in :data:`IMAGE_SUFFIXES`, no
    hidden file or folder on the way; a folder's files (sorted) before its subfolders."""
    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # prunes hidden folders
        found += [Path(folder, name) for name in sorted(files)
                  if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES]
    return found


class TooManyPixelsError(ValueError):
    """An image over a pixel budget (from its header or its shape, before any decoding)."""


def check_pixels(width: int, height: int, max_pixels: int | None, what: str) -> None:
    """A :class:`TooManyPixelsError` naming ``what`` when ``width x height`` is over
    ``max_pixels``."""
    if max_pixels is not None and width * height > max_pixels:
        raise TooManyPixelsError(f"{what} is {width} x {height} = {width * height:,} pixels, "
                                 f"over the budget of {max_pixels:,} (--max-pixels raises it)")


def load_image(path: str | os.PathLike[str], draft: int | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an image file fully, upright (EXIF orientation applied). ``draft``: a JPEG may
    be decoded at a reduced scale whose sides stay >= ``draft``. The size is checked against
    ``max_pixels`` from the header, before anything is decoded. Raises ValueError naming
    the file when it is empty, truncated, too large, not an image or of a non-raster
    format."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            if draft is not None:
                image.draft("RGB", (draft, draft))
            check_pixels(*image.size, max_pixels, f"{path}: the image")
            image.load()
            if image.mode == "F" and not np.isfinite(np.asarray(image)).all():
                raise ValueError(f"{path}: {_NOT_FINITE}")
            return ImageOps.exif_transpose(image)
    except ValueError as err:
        if str(err).startswith(f"{path}: "):
            raise
        raise ValueError(f"{path}: cannot read the image ({err})") from err
    except Exception as err:  # a damaged file can fail any way inside a decoder
        raise ValueError(f"{path}: cannot read the image ({type(err).__name__}: {err})"
                         ) from err


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is ``size`` (bicubic, antialiased when shrinking), then
    cut the central ``size x size`` square."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_uint8_pixels(image: Image.Image | np.ndarray, channels: int) -> np.ndarray:
    """A PIL image or a numpy image ``(H, W)`` / ``(H, W, C)`` (C in 1..4: grey, grey +
    alpha, RGB, RGBA; uint8, uint16, or float in [0, 1]) -> uint8 ``(H, W, channels)``
    (module doc). Raises ValueError for anything else."""
    if channels not in (1, 3):
        raise ValueError(f"image inputs need a 1- or 3-channel model, this one has {channels} "
                         f"channels; pass tensors (C, H, W) instead")
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    elif not isinstance(image, Image.Image):
        raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
            f"expected a PIL image or a numpy array, got {type(image).__name__}")
    mode = image.mode
    if mode in _WIDE_MODES or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if mode == "F" and not np.isfinite(values).all():
            raise ValueError(_NOT_FINITE)
        values = values if mode == "F" else values / 257.0
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), mode="L")
    try:
        if mode in _ALPHA_MODES or "transparency" in image.info:
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, image.convert("RGBA"))
        image = image.convert("L" if channels == 1 else "RGB")
    except (ValueError, OSError) as err:
        raise ValueError(f"cannot convert a PIL image of mode {mode!r}: {err}") from err
    pixels = np.array(image, dtype=np.uint8)  # a writable copy
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """A numpy image -> the PIL image of its 8-bit values (module doc)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected a numpy image (H, W) or (H, W, C) with C in 1..4 (or a "
                         f"batch (B, H, W, C)), got shape {array.shape}")
    if array.dtype == np.uint16:
        array = np.round(array / 257.0).astype(np.uint8)
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError("float numpy images must lie in [0, 1], got NaN or inf values")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(f"float numpy images must lie in [0, 1], got values in "
                             f"[{array.min():g}, {array.max():g}]")
        array = np.round(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"expected a numpy image of dtype uint8, uint16 or float, got "
                         f"{array.dtype}")
    array = np.ascontiguousarray(array)
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)


_MOVED = frozenset({"DEFAULT_NORMALIZATION", "ImageLike", "Images", "Normalization",
                    "replicate_pad", "split_images"})


def __getattr__(name: str) -> Any:
    """The names that moved to :mod:`vqtok.tokenizers.pixels`, with a DeprecationWarning."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"vqtok.formats.images.{name} moved to vqtok.tokenizers.pixels; import it "
                  f"from there (the old name goes in the next release)", DeprecationWarning,
                  stacklevel=2)
    from vqtok.tokenizers import pixels

    return getattr(pixels, name)
