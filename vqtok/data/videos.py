"""Video datasets: a folder of videos (animated GIFs and folders of frame images), and
fixed-length windows of another dataset's clips (what video tokenizers train on)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from vqtok.formats.images import resize_center_crop
from vqtok.formats.videos import load_video, video_sources
from vqtok.tokenizers.pixels import DEFAULT_NORMALIZATION
from vqtok.validation import check_positive_or_none


class VideoFolder(Dataset):
    """Every video directly under ``root``: each ``.gif`` file and each subfolder of frame
    images (:func:`~vqtok.formats.videos.video_sources`).

    Item ``i`` is ``(clip, name)``: ``clip`` uint8 ``(T, C, H, W)``, ``name`` the file or
    folder name without suffix. All videos are decoded at construction (and held in
    memory), so that a damaged file fails here: a ValueError names the file and the
    problem, as it does when a video is shorter than ``num_frames`` or when the videos
    differ in frame size and no ``size`` is given.

    Args:
        root: the folder.
        channels: 1 (grey) or 3 (RGB).
        num_frames: keep the first ``num_frames`` frames of each video; ``None`` keeps all
            (then every video must have the same length to be batched).
        size: scale and centre-crop every frame to ``size x size``
            (:func:`~vqtok.formats.images.resize_center_crop`); ``None`` keeps the frames
            as they are, and they must all have one size.
    """

    def __init__(self, root: str | os.PathLike, channels: int = 3, num_frames: int | None = None,
                 size: int | None = None) -> None:
        check_positive_or_none(num_frames=num_frames, size=size)
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"video folder {self.root} does not exist")
        self.sources = video_sources(self.root)
        if not self.sources:
            raise ValueError(f"no video in {self.root}: no .gif file and no subfolder of "
                             f"frame images")
        self.clips: list[Tensor] = []
        for source in self.sources:
            frames = load_video(source, channels=channels)  # (T, H, W, C)
            if num_frames is not None:
                if len(frames) < num_frames:
                    raise ValueError(f"{source}: {len(frames)} frames, fewer than "
                                     f"num_frames={num_frames}")
                frames = frames[:num_frames]
            if size is not None:
                frames = np.stack([_resize(frame, size) for frame in frames])
            clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
            if self.clips and clip.shape[2:] != self.clips[0].shape[2:]:
                first = self.clips[0].shape
                raise ValueError(
                    f"{source}: frames of {clip.shape[3]}x{clip.shape[2]} pixels but "
                    f"{self.sources[0]} has {first[3]}x{first[2]}; give a size to resize all")
            self.clips.append(clip.contiguous())

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        return self.clips[index], self.sources[index].stem


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    """One ``(H, W, C)`` uint8 frame scaled and centre-cropped to ``(size, size, C)``."""
    grey = frame.shape[2] == 1
    image = Image.fromarray(frame[..., 0] if grey else frame)
    out = np.asarray(resize_center_crop(image, size))
    return out[..., None] if grey else out


class Clips(Dataset):
    """uint8 clips ``(T, H, W)`` of a dataset -> ``(float32 (1, frames, H, W) in the
    model's space, 0)``: the first ``frames`` frames, or with ``random_start`` a window of
    ``frames`` consecutive frames starting anywhere (a fresh draw at every access)."""

    def __init__(self, clips: Dataset, frames: int, random_start: bool) -> None:
        self.clips, self.frames, self.random_start = clips, frames, random_start

    def __len__(self) -> int:
        return len(self.clips)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        clip = self.clips[index][0]  # (T, H, W) uint8
        start = 0
        if self.random_start:
            start = int(torch.randint(clip.shape[0] - self.frames + 1, ()))
        window = clip[start:start + self.frames]
        return DEFAULT_NORMALIZATION.to_model(window)[None], 0
