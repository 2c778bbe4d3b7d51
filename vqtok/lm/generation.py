"""Text to image (and to video) with a trained language model: the inference half of the
LM.

:func:`generate_from_prompt` loads an LM directory and the tokenizer it was trained
with, turns a prompt into the caption the LM learned
(:func:`~vqtok.lm.captions.expand_prompt`), and decodes the constrained token grids
(:func:`vqtok.lm.model.generate_image`) to images;
:func:`video_from_prompt` does the same with ``(t, h, w)`` grids and a video tokenizer.
Plain torch: nothing here imports Lightning.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqtok.formats.tokenizer_dir import fingerprint
from vqtok.lm.captions import expand_prompt
from vqtok.lm.lm_dir import MAX_IMAGE_TOKENS, load_lm_dir
from vqtok.lm.model import MultimodalLM, generate_image, generate_video
from vqtok.lm.streams import Vocabulary
from vqtok.tokenizers import ImageTokenizer, VideoTokenizer
from vqtok.tokenizers.runtime import resolve_device

log = logging.getLogger(__name__)


def _load_pair(lm_dir: str | Path, tokenizer_dir: str | Path, device: str, video: bool
               ) -> tuple[MultimodalLM, Vocabulary, dict, ImageTokenizer | VideoTokenizer]:
    """The LM and the tokenizer it writes codes for, checked against each other."""
    model, vocab, config = load_lm_dir(lm_dir, device=device)
    cls = VideoTokenizer if video else ImageTokenizer
    tokenizer = cls.from_pretrained(tokenizer_dir, device=device)
    if tokenizer.num_stages is not None:
        raise ValueError(f"tokenizer {tokenizer_dir} gives several ids per position (a "
                         f"multi-stage quantizer); the LM writes one id per image token")
    if vocab.image_codebook_size != tokenizer.codebook_size:
        raise ValueError(
            f"LM {lm_dir} writes image codes of a codebook of "
            f"{vocab.image_codebook_size} but tokenizer {tokenizer_dir} has "
            f"{tokenizer.codebook_size} codes; use the tokenizer the LM was trained with")
    trained_with = config.get("extra", {}).get("tokenizer", {}).get("sha256")
    if trained_with and trained_with != fingerprint(tokenizer_dir):
        log.warning("tokenizer %s is not the one LM %s was trained with (%s); the output "
                    "will likely be meaningless", tokenizer_dir, lm_dir,
                    config["extra"]["tokenizer"].get("path"))
    return model, vocab, config, tokenizer


def _check_sampling(num: int, temperature: float, top_k: int | None, prompt: str) -> None:
    if not (isinstance(num, int) and num >= 1 and math.isfinite(temperature)
            and temperature >= 0 and (top_k is None or (isinstance(top_k, int) and top_k >= 1))):
        raise ValueError(f"need num >= 1, a finite temperature >= 0 and top_k >= 1, got num "
                         f"{num}, temperature {temperature}, top_k {top_k}")
    if not prompt.strip():
        raise ValueError(f"prompt must be non-empty text, got {prompt!r}")


def _caption(prompt: str, config: dict, raw_prompt: bool) -> str:
    """The caption fed to the LM: ``prompt`` as is, or put into its caption template."""
    return prompt.strip() if raw_prompt else expand_prompt(prompt, config["caption_template"])


def generate_from_prompt(
    lm_dir: str | Path, tokenizer_dir: str | Path, prompt: str, *, num: int = 1,
    temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
    raw_prompt: bool = False, device: str = "cpu",
) -> tuple[list[Image.Image], str]:
    """``num`` images for ``prompt`` and the caption actually fed to the LM.

    Raises ValueError for a bad LM or tokenizer directory, an empty prompt, or
    an LM whose image codebook does not match the tokenizer's.
    """
    _check_sampling(num, temperature, top_k, prompt)
    device = str(resolve_device(device))
    model, vocab, config, tokenizer = _load_pair(lm_dir, tokenizer_dir, device, video=False)
    caption = _caption(prompt, config, raw_prompt)
    h, w = config["image_tokens"]
    generator = torch.Generator(device=device).manual_seed(seed)
    grids = generate_image(model, vocab, [caption] * num, h, w, temperature=temperature,
                           top_k=top_k, generator=generator)  # (num, h, w)
    return tokenizer.decode(grids), caption


def video_from_prompt(
    lm_dir: str | Path, tokenizer_dir: str | Path, prompt: str, *, frames: int | None = None,
    num: int = 1, temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
    raw_prompt: bool = False, device: str = "cpu",
) -> tuple[list[np.ndarray], str]:
    """``num`` clips for ``prompt``, each uint8 ``(frames, H, W, C)``, and the caption fed
    to the LM.

    The LM writes a full ``(t, h, w)`` grid between BOV and EOV (constrained as images
    are); the :class:`~vqtok.VideoTokenizer` decodes ``t`` latent frames to ``1 + (t - 1) *
    temporal_factor`` frames, so ``frames`` must be ``1 + k * temporal_factor`` (default:
    the length of the LM's training clips, its ``video_tokens``). Raises ValueError for
    another count, an LM trained without video, or the mismatches of images.
    """
    _check_sampling(num, temperature, top_k, prompt)
    device = str(resolve_device(device))
    model, vocab, config, tokenizer = _load_pair(lm_dir, tokenizer_dir, device, video=True)
    if "video_tokens" not in config:
        raise ValueError(f"LM {lm_dir} was trained on images (its config.json has no "
                         f"video_tokens); generate images without --video")
    trained_t, h, w = config["video_tokens"]
    factor = tokenizer.temporal_factor
    if frames is None:
        frames = 1 + (trained_t - 1) * factor
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (
            (frames - 1) % factor):
        raise ValueError(f"frames must be 1 + {factor} k (1, {1 + factor}, {1 + 2 * factor}, "
                         f"...) for this tokenizer (temporal factor {factor}), got {frames!r}")
    t = 1 + (frames - 1) // factor
    if t * h * w > MAX_IMAGE_TOKENS:
        raise ValueError(f"{frames} frames are {t} x {h} x {w} = {t * h * w} tokens, more than "
                         f"the {MAX_IMAGE_TOKENS} a generated grid may have")
    caption = _caption(prompt, config, raw_prompt)
    generator = torch.Generator(device=device).manual_seed(seed)
    grids = generate_video(model, vocab, [caption] * num, t, h, w, temperature=temperature,
                           top_k=top_k, generator=generator)  # (num, t, h, w)
    return [tokenizer.decode(grid) for grid in grids], caption
