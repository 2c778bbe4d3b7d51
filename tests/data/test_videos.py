"""Reading videos: animated GIFs and frame folders, written here with Pillow, and the
one-line errors of damaged or inconsistent ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqtok.data import VideoFolder
from vqtok.formats.videos import load_video, video_sources


def frames(count: int, size: tuple[int, int] = (16, 12), seed: int = 0) -> np.ndarray:
    """``(count, H, W, 3)`` frames of a few flat colours (exact in a GIF palette), each
    frame different."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(8, 3), dtype=np.uint8)
    width, height = size
    out = np.empty((count, height, width, 3), np.uint8)
    for t in range(count):
        out[t] = palette[(np.arange(height)[:, None] // 4 + np.arange(width) // 4 + t) % 8]
    return out


def write_gif(path: Path, video: np.ndarray) -> None:
    pictures = [Image.fromarray(f) for f in video]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=100, loop=0)


def test_gif_round_trips_every_frame(tmp_path: Path) -> None:
    video = frames(7)
    write_gif(tmp_path / "a.gif", video)
    got = load_video(tmp_path / "a.gif")
    assert got.dtype == np.uint8 and got.shape == (7, 12, 16, 3)
    assert np.array_equal(got, video)
    grey = load_video(tmp_path / "a.gif", channels=1)
    luma = np.asarray(Image.fromarray(video[3]).convert("L"))  # ITU-R 601-2, Pillow's rule
    assert grey.shape == (7, 12, 16, 1) and np.array_equal(grey[3, ..., 0], luma)


def test_frame_folder_in_natural_order(tmp_path: Path) -> None:
    video = frames(12)
    folder = tmp_path / "clip"
    folder.mkdir()
    for t, frame in enumerate(video):
        Image.fromarray(frame).save(folder / f"frame{t}.png")  # frame10 after frame9
    (folder / ".hidden.png").write_bytes(b"junk")
    assert np.array_equal(load_video(folder), video)


def test_folder_dataset_reads_gifs_and_frame_folders(tmp_path: Path) -> None:
    write_gif(tmp_path / "b.gif", frames(5, seed=1))
    folder = tmp_path / "a"
    folder.mkdir()
    for t, frame in enumerate(frames(6, seed=2)):
        Image.fromarray(frame).save(folder / f"{t:03d}.png")
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "empty").mkdir()
    assert [p.name for p in video_sources(tmp_path)] == ["a", "b.gif"]
    data = VideoFolder(tmp_path, num_frames=5)
    assert len(data) == 2
    clip, name = data[1]
    assert name == "b" and clip.dtype == torch.uint8 and clip.shape == (5, 3, 12, 16)
    assert torch.equal(clip, torch.from_numpy(frames(5, seed=1)).permute(0, 3, 1, 2))
    resized = VideoFolder(tmp_path, num_frames=5, size=8, channels=1)
    assert resized[0][0].shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match=r"b\.gif: 5 frames, fewer than num_frames=6"):
        VideoFolder(tmp_path, num_frames=6)


def one_line_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_damaged_and_inconsistent_videos_fail_in_one_line(tmp_path: Path) -> None:
    good = frames(4)
    write_gif(tmp_path / "good.gif", good)
    data = (tmp_path / "good.gif").read_bytes()
    (tmp_path / "cut.gif").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.gif").write_bytes(b"GIF89a but not really")
    one_line_error(lambda: load_video(tmp_path / "junk.gif"), r"junk\.gif: cannot read the GIF")
    one_line_error(lambda: load_video(tmp_path / "cut.gif"), r"cut\.gif: cannot read the GIF")
    one_line_error(lambda: VideoFolder(tmp_path), r"cut\.gif: cannot read the GIF")

    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(good[0]).save(folder / "0.png")
    Image.fromarray(frames(1, size=(20, 12))[0]).save(folder / "1.png")
    one_line_error(lambda: load_video(folder), r"frame 1\.png is 20x12 but frame 0\.png is 16x12")

    other = tmp_path / "other"
    other.mkdir()
    write_gif(other / "a.gif", good)
    write_gif(other / "b.gif", frames(4, size=(20, 12)))
    one_line_error(lambda: VideoFolder(other), r"b\.gif: frames of 20x12 pixels but .*a\.gif "
                                              r"has 16x12")
    one_line_error(lambda: load_video(tmp_path / "nothing.gif"), "no such video")
    one_line_error(lambda: VideoFolder(tmp_path / "nowhere"), "does not exist")
    (tmp_path / "still.png").write_bytes(b"")
    one_line_error(lambda: load_video(tmp_path / "still.png"), "not a video")
