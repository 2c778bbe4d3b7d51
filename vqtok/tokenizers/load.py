"""One entry point for any tokenizer directory: :func:`load_tokenizer` reads its
``config.json`` once and returns the tokenizer of the model's kind."""

from __future__ import annotations

import os
from typing import Any

import torch

from vqtok.formats.hub import resolve_model_dir
from vqtok.formats.tokenizer_dir import TokenizerFormatError, is_video_model, load_tokenizer_dir
from vqtok.interop.diffusers import is_diffusers_dir
from vqtok.tokenizers.image import ImageTokenizer
from vqtok.tokenizers.runtime import resolve_device
from vqtok.tokenizers.video import VideoTokenizer


class ImageOptionError(ValueError):
    """An option of the image tokenizer given for a video tokenizer."""

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"{option}: {reason}")
        self.option = option
        self.reason = reason


IMAGE_ONLY = {
    "tile_size": "a video tokenizer does not run on tiles",
    "compile": "only the image tokenizer's encoder is compiled",
    "batch_invariant": "a video tokenizer runs each clip by itself",
    "min_size": "a video tokenizer does not pad its frames",
}
"""The image tokenizer's options, and why a video tokenizer has none of them."""


def load_tokenizer(path: str | os.PathLike[str], device: str | torch.device = "cpu", *,
                   revision: str | None = None, **options: Any
                   ) -> ImageTokenizer | VideoTokenizer:
    """The tokenizer of a tokenizer directory or Hub repo id (at ``revision``): a
    :class:`~vqtok.tokenizers.video.VideoTokenizer` for a video model, else an
    :class:`~vqtok.tokenizers.image.ImageTokenizer`, from one read of its ``config.json``.
    A diffusers ``VQModel`` folder is converted as it loads (docs/interop.md#diffusers).

    ``options`` go to the tokenizer's constructor (``max_pixels`` to either kind; ``"auto"``
    is each kind's default budget). An option only the image tokenizer takes
    (:data:`IMAGE_ONLY`), given for a video tokenizer, is an :class:`ImageOptionError` (a
    ValueError naming it).
    """
    device = resolve_device(device)  # before reading anything
    root = resolve_model_dir(path, "tokenizer", TokenizerFormatError, revision)
    if is_diffusers_dir(root):  # a diffusers VQModel folder, converted as it loads
        return ImageTokenizer.from_pretrained(path, device=device, revision=revision, **options)
    model, config = load_tokenizer_dir(root)
    if not is_video_model(model):
        return ImageTokenizer._from_loaded(model, config, device=device, **options)
    for option in sorted(options.keys() & IMAGE_ONLY.keys()):
        raise ImageOptionError(option, IMAGE_ONLY[option])
    return VideoTokenizer._from_loaded(model, config, device=device, **options)
