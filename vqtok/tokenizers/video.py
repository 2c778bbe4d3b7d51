"""``VideoTokenizer``: clips in, ``(t, h, w)`` int64 token ids out, and back.

A clip of ``T = 1 + k * temporal_factor`` frames of ``H x W`` pixels gives ids of shape
``(1 + k, H / f, W / f)`` (``(t, h, w, S)`` for a quantizer of S stages), through a
causal :class:`~vqtok.models.VideoEncoder` (docs/video.md):

* **Inputs.** A list of PIL images (the frames), a numpy array ``(T, H, W, C)`` or ``(T,
  H, W)`` (uint8, uint16 or float in [0, 1], as images: ``C`` in 1..4), or the path of an
  animated GIF or of a folder of frame images (:func:`vqtok.formats.videos.load_video`).
  Frames become 8-bit pixels of the model's channels exactly as images do
  (:func:`vqtok.formats.images.to_uint8_pixels`). Frame sides must be multiples of ``f``
  and the frame count ``1 + temporal_factor * k``; anything else is a one-line ValueError
  that says what is accepted (clips are not padded).
* **Causality.** Latent frame ``i`` depends on input frames ``<= temporal_factor * i``
  only; latent frame 0 on the first frame alone. So the ids of a clip's first frame are
  those of that frame encoded as a one-frame clip, which :meth:`encode_image` does: the
  video tokenizer's image path (a picture is a one-frame video).
* **Determinism.** Clips run one at a time, so a clip's ids never depend on the other
  clips of a call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vqtok.formats.images import to_uint8_pixels
from vqtok.formats.tokens import check_ids_in_range, int64_ids
from vqtok.formats.videos import DEFAULT_MAX_CLIP_PIXELS, check_clip_pixels, load_video
from vqtok.models.autoencoder import VQAutoencoder
from vqtok.models.video import latent_frames, valid_frame_counts
from vqtok.tokenizers.base import Tokenizer
from vqtok.tokenizers.pixels import DEFAULT_NORMALIZATION, Normalization

Clip = Sequence[Image.Image] | np.ndarray | str | os.PathLike[str]

class VideoTokenizer(Tokenizer):
    """Turns clips into ``(t, h, w)`` int64 token ids with a trained causal video
    autoencoder (a :class:`~vqtok.models.VQAutoencoder` holding a
    :class:`~vqtok.models.VideoEncoder` and :class:`~vqtok.models.VideoDecoder`), and
    ids back into ``(T, H, W, C)`` uint8 frames (module doc).

    Args:
        model: the video autoencoder; moved to ``device`` and put in eval mode.
        device: where the model runs; ids always come back on the CPU.
        normalization: pixel normalisation, ``x = (pixel / 255 - mean) / std``.
        max_pixels: the largest clip in pixels over all frames (checked before the model
            runs; ``None``: no limit; ``"auto"``:
            :data:`~vqtok.formats.videos.DEFAULT_MAX_CLIP_PIXELS`).
    """

    video = True
    wrong_kind = "this model encodes images (no VideoEncoder); use vqtok.ImageTokenizer"

    def __init__(self, model: VQAutoencoder, *, device: str | torch.device = "cpu",
                 normalization: Normalization = DEFAULT_NORMALIZATION,
                 max_pixels: int | None | str = DEFAULT_MAX_CLIP_PIXELS) -> None:
        super().__init__(model, device, normalization)
        self.max_pixels = self._budget(max_pixels, DEFAULT_MAX_CLIP_PIXELS)

    # ---- shape facts --------------------------------------------------------------------
    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first."""
        return int(self.model.encoder.temporal_factor)

    def tokens_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The id grid ``(t, h, w)`` of a clip of ``frames`` frames of ``height x width``
        pixels; a ValueError when the tokenizer does not take such a clip."""
        self._check_clip_shape(frames, height, width)
        f = self.downsample_factor
        return (latent_frames(frames, self.temporal_factor), height // f, width // f)

    # ---- encode -------------------------------------------------------------------------
    def frames(self, clip: Clip) -> np.ndarray:
        """A clip (module doc) -> its checked uint8 frames ``(T, H, W, C)``, ``C`` the
        model's channels."""
        if isinstance(clip, (str, os.PathLike)):
            pixels = load_video(clip, self.channels, max_pixels=self.max_pixels)
        elif isinstance(clip, np.ndarray):
            if clip.ndim not in (3, 4) or 0 in clip.shape:
                raise ValueError(f"expected a clip array (T, H, W, C) or (T, H, W), got shape "
                                 f"{clip.shape}")
            pixels = np.stack([to_uint8_pixels(frame, self.channels) for frame in clip])
        elif isinstance(clip, (list, tuple)):
            if not clip or not all(isinstance(frame, Image.Image) for frame in clip):
                raise ValueError("expected a non-empty list of PIL images (the frames)")
            sizes = sorted({frame.size for frame in clip})
            if len(sizes) > 1:
                raise ValueError(f"frames differ in size (width x height {sizes}); every frame "
                                 f"of a clip must have one size")
            pixels = np.stack([to_uint8_pixels(frame, self.channels) for frame in clip])
        else:
            raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
                f"expected a clip as a list of PIL images, a (T, H, W, C) array or the path "
                f"of a GIF or frame folder, got {type(clip).__name__}")
        self._check_clip_shape(*pixels.shape[:3])
        return pixels

    def encode(self, clip: Clip) -> Tensor:
        """One clip -> int64 ids ``(t, h, w)`` on the CPU (``(t, h, w, S)`` for S stages)."""
        x = self.normalization.to_model(torch.from_numpy(self.frames(clip)))  # (T, H, W, C)
        x = x.permute(3, 0, 1, 2)[None]  # (1, C, T, H, W)
        with self._kernels():
            ids = self.model.encode(x.to(self.device, self._dtype())).indices[0]
        return ids.to("cpu", torch.int64)

    def encode_batch(self, clips: Sequence[Clip]) -> Tensor:
        """Clips of one shape -> ids ``(B, t, h, w)``; each clip is run by itself, so its
        ids are those :meth:`encode` gives it."""
        if isinstance(clips, (np.ndarray, str, os.PathLike)) or not clips:
            raise ValueError("expected a non-empty list of clips")
        grids = [self.encode(clip) for clip in clips]
        shapes = sorted({tuple(g.shape) for g in grids})
        if len(shapes) > 1:
            raise ValueError(f"clips give different token grids {shapes}; encode them one "
                             f"at a time")
        return torch.stack(grids)

    def encode_image(self, image: Image.Image | np.ndarray) -> Tensor:
        """One picture -> ids ``(h, w)``: the picture as a one-frame clip. By causality
        these are the ids of the first latent frame of any clip that starts with it."""
        if isinstance(image, np.ndarray):
            image = image[None]
        elif isinstance(image, Image.Image):
            image = [image]
        else:
            raise ValueError(  # noqa: TRY004
                f"expected a PIL image or numpy array, got {type(image).__name__}")
        return self.encode(image)[0]

    # ---- decode -------------------------------------------------------------------------
    def decode(self, ids: Tensor | np.ndarray) -> np.ndarray:
        """Ids ``(t, h, w)`` (or ``(t, h, w, s)``) -> uint8 frames ``(1 + (t - 1) *
        temporal_factor, h * f, w * f, C)``."""
        grid = self._check_ids(ids, batched=False)
        with self._kernels():
            x_hat = self.model.decode_indices(grid[None].to(self.device))[0]  # (C, T, H, W)
        return self.normalization.to_uint8(x_hat).permute(1, 2, 3, 0).numpy()

    def decode_batch(self, ids: Tensor | np.ndarray) -> np.ndarray:
        """Ids ``(B, t, h, w)`` -> uint8 frames ``(B, T, H, W, C)``, clip by clip."""
        grids = self._check_ids(ids, batched=True)
        return np.stack([self.decode(grid) for grid in grids])

    # ---- internals ----------------------------------------------------------------------
    def _check_clip_shape(self, frames: int, height: int, width: int) -> None:
        f, factor = self.downsample_factor, self.temporal_factor
        if frames < 1 or (frames - 1) % factor:
            below = 1 + (frames - 1) // factor * factor
            hint = f"; drop the last {frames - below}" if frames > 1 else ""
            raise ValueError(f"a clip of {frames} frames: this tokenizer takes "
                             f"{valid_frame_counts(factor)} frames{hint}")
        if height < 1 or width < 1 or height % f or width % f:
            raise ValueError(f"frames of {height}x{width} pixels (height x width): both sides "
                             f"must be positive multiples of {f} (crop or pad the frames)")
        self._check_budget(frames, height, width, "a clip")

    def _check_budget(self, frames: int, height: int, width: int, what: str) -> None:
        check_clip_pixels(frames, height, width, self.max_pixels, what)

    def _check_ids(self, ids: Tensor | np.ndarray, batched: bool) -> Tensor:
        ids = int64_ids(ids)
        stages = self.num_stages
        axes = (3 if stages is None else 4) + int(batched)
        layout = ("(B, t, h, w)" if batched else "(t, h, w)") if stages is None else (
            f"{'(B, t, h, w, s)' if batched else '(t, h, w, s)'} with s <= {stages}")
        if ids.ndim != axes or 0 in ids.shape or (stages is not None and
                                                  ids.shape[-1] > stages):
            raise ValueError(f"expected ids of shape {layout}, got shape {tuple(ids.shape)}")
        t, h, w = ids.shape[int(batched):int(batched) + 3]
        f = self.downsample_factor
        self._check_budget(1 + (t - 1) * self.temporal_factor, h * f, w * f,
                           f"a {t} x {h} x {w} token grid decodes to a clip")
        check_ids_in_range(ids, self.codebook_size)
        return ids
