"""Reading clips within a pixel budget: a GIF's frame count and canvas, and a frame folder's
sizes, are judged from the file's structure and headers before any frame is decoded.
GIFs here are written byte by byte (GIF89a specification), so a few hundred bytes can
declare a canvas of millions of pixels and a thousand frames."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqtok.formats import videos
from vqtok.formats.videos import DEFAULT_MAX_CLIP_PIXELS, gif_layout, load_video

ONE_PIXEL = b"\x02\x02\x44\x01\x00"
"""The LZW data of a one-pixel frame of colour 0: code size 2, one 2-byte sub-block
holding clear (4), 0, end (5) in 3-bit codes, then the empty sub-block."""


def raw_gif(width: int, height: int, frames: int, extent: tuple[int, int] = (1, 1),
            trailer: bool = True) -> bytes:
    """A GIF of a ``width x height`` logical screen and ``frames`` frames, each an image
    descriptor of ``extent`` (width, height) at the origin holding the data of one pixel
    (whole for the default extent; a larger one is cut short, which only decoding finds)."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0)
                    + b"\x00\x00\x00\xff\xff\xff")  # a global table of two colours
    for _ in range(frames):
        out += b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # graphic control: 100 ms, no disposal
        out += b"," + struct.pack("<HHHHB", 0, 0, *extent, 0) + ONE_PIXEL
    return bytes(out + (b";" if trailer else b""))


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails any decoding of pixels in vqtok.formats.videos: records the call and raises."""
    calls: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(str(args[0]) if args else "")
        raise AssertionError("decoded before the budget was checked")

    monkeypatch.setattr(videos.Image, "open", refuse)
    monkeypatch.setattr(videos, "load_image", refuse)
    return calls


def test_the_layout_is_read_from_the_blocks(tmp_path: Path) -> None:
    path = tmp_path / "a.gif"
    path.write_bytes(raw_gif(64, 48, 5))
    assert gif_layout(path) == (5, 48, 64)
    with Image.open(path) as gif:  # Pillow agrees: frames and canvas
        assert (gif.n_frames, gif.size) == (5, (64, 48))
    assert load_video(path, channels=1).shape == (5, 48, 64, 1)
    path.write_bytes(raw_gif(64, 48, 5, trailer=False))  # Pillow reads it too
    assert gif_layout(path) == (5, 48, 64)


def test_a_frame_beyond_the_screen_grows_the_canvas(tmp_path: Path) -> None:
    path = tmp_path / "a.gif"
    Image.fromarray(np.zeros((24, 40), np.uint8)).save(path)  # one 40 x 24 frame
    data = bytearray(path.read_bytes())
    data[6:10] = struct.pack("<HH", 1, 1)  # on a 1 x 1 logical screen
    path.write_bytes(data)
    assert gif_layout(path) == (1, 24, 40)
    assert load_video(path, channels=1).shape == (1, 24, 40, 1)  # what Pillow decodes


def test_a_small_gif_declaring_a_huge_clip_is_refused_before_decoding(
        tmp_path: Path, no_decoding: list[str]) -> None:
    path = tmp_path / "clip.gif"
    path.write_bytes(raw_gif(4096, 4096, 1001))  # 23 KB; 1,001 frames of 16.8 megapixels
    assert path.stat().st_size < 24_000
    with pytest.raises(ValueError, match=r"clip\.gif: a clip of 1001 frames of 4096x4096 is "
                                         r"16,793,993,216 pixels, over the budget of "
                                         r"33,554,432") as info:
        load_video(path, channels=1, max_pixels=DEFAULT_MAX_CLIP_PIXELS)
    assert "\n" not in str(info.value) and no_decoding == []
    path.write_bytes(raw_gif(1, 1, 1001, extent=(2048, 2048)))  # a small screen, large frames
    with pytest.raises(ValueError, match=r"1001 frames of 2048x2048 .* over the budget"):
        load_video(path, channels=1)
    assert no_decoding == []


def test_a_truncated_gif_is_refused_in_one_line(tmp_path: Path) -> None:
    data = raw_gif(16, 16, 3)
    for cut in (5, 14, len(data) - 4, len(data) - 9):
        path = tmp_path / f"cut{cut}.gif"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"cut{cut}\.gif: ") as info:
            load_video(path)
        assert "\n" not in str(info.value)


def test_a_frame_folder_is_judged_from_its_headers(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    for t in range(5):
        Image.fromarray(np.full((12, 16), t, np.uint8)).save(folder / f"{t}.png")
    assert load_video(folder, channels=1, max_pixels=5 * 12 * 16).shape == (5, 12, 16, 1)
    calls: list[object] = []
    monkeypatch.setattr(videos, "load_image", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match=r"clip: a clip of 5 frames of 12x16 is 960 pixels, "
                                         r"over the budget of 959"):
        load_video(folder, channels=1, max_pixels=5 * 12 * 16 - 1)
    assert calls == []
