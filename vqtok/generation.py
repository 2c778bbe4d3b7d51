"""Text to image with a trained decoder: the inference half of the multimodal model.

:func:`generate_from_prompt` loads a decoder directory and the tokenizer it was trained
with, turns a prompt into the caption the decoder learned (:func:`expand_prompt`), and
decodes the constrained token grids (:func:`vqtok.multimodal.generate_image`) to images.
Plain torch: nothing here imports Lightning.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from PIL import Image

from vqtok.formats.decoder_dir import load_decoder_dir
from vqtok.formats.tokenizer_dir import fingerprint
from vqtok.multimodal.decoder import generate_image
from vqtok.runtime import resolve_device
from vqtok.tokenizer import ImageTokenizer

__all__ = ["caption_for", "expand_prompt", "generate_from_prompt"]

log = logging.getLogger(__name__)


def caption_for(label: str, template: str = "a photo of a {label}") -> str:
    """``template`` filled with the lower-cased ``label``; ``"a {label}"`` becomes
    ``"an {label}"`` before a vowel ("a photo of an ankle boot")."""
    if "{label}" not in template:
        raise ValueError(f"caption_template must contain '{{label}}', got {template!r}")
    name = label.strip().lower()
    if not name:
        raise ValueError(f"label must be non-empty text, got {label!r}")
    if name[0] in "aeiou":
        template = template.replace("a {label}", "an {label}")
    return template.format(label=name)


def expand_prompt(prompt: str, template: str | None) -> str:
    """The caption the decoder was trained on for ``prompt``: ``template`` filled with it
    ("ankle boot" -> "a photo of an ankle boot"), unless ``prompt`` already starts like the
    template does, or there is no template. Raises ValueError for an empty prompt."""
    text = prompt.strip()
    if not text:
        raise ValueError(f"prompt must be non-empty text, got {prompt!r}")
    if template is None:
        return text
    prefix = template.split("{label}")[0].strip().lower()
    if prefix and text.lower().startswith(prefix):
        return text
    return caption_for(text, template)


def generate_from_prompt(
    decoder_dir: str | Path,
    tokenizer_dir: str | Path,
    prompt: str,
    *,
    num: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    raw_prompt: bool = False,
    device: str = "cpu",
) -> tuple[list[Image.Image], str]:
    """``num`` images for ``prompt`` and the caption actually fed to the decoder.

    Raises ValueError for a bad decoder or tokenizer directory, an empty prompt, or a
    decoder whose image codebook does not match the tokenizer's.
    """
    if not (isinstance(num, int) and num >= 1 and math.isfinite(temperature)
            and temperature >= 0 and (top_k is None or (isinstance(top_k, int) and top_k >= 1))):
        raise ValueError(f"need num >= 1, a finite temperature >= 0 and top_k >= 1, got num "
                         f"{num}, temperature {temperature}, top_k {top_k}")
    device = str(resolve_device(device))
    if not prompt.strip():
        raise ValueError(f"prompt must be non-empty text, got {prompt!r}")
    model, vocab, config = load_decoder_dir(decoder_dir, device=device)
    tokenizer = ImageTokenizer.from_pretrained(tokenizer_dir, device=device)
    if tokenizer.num_stages is not None:
        raise ValueError(f"tokenizer {tokenizer_dir} gives several ids per position (a "
                         f"multi-stage quantizer); the decoder writes one id per image token")
    if vocab.image_codebook_size != tokenizer.codebook_size:
        raise ValueError(
            f"decoder {decoder_dir} writes image codes of a codebook of "
            f"{vocab.image_codebook_size} but tokenizer {tokenizer_dir} has "
            f"{tokenizer.codebook_size} codes; use the tokenizer the decoder was trained with")
    trained_with = config.get("extra", {}).get("tokenizer", {}).get("sha256")
    if trained_with and trained_with != fingerprint(tokenizer_dir):
        log.warning("tokenizer %s is not the one decoder %s was trained with (%s); the images "
                    "will likely be meaningless", tokenizer_dir, decoder_dir,
                    config["extra"]["tokenizer"].get("path"))
    caption = prompt.strip() if raw_prompt else expand_prompt(prompt, config["caption_template"])
    h, w = config["image_tokens"]
    generator = torch.Generator(device=device).manual_seed(seed)
    grids = generate_image(model, vocab, [caption] * num, h, w, temperature=temperature,
                           top_k=top_k, generator=generator)  # (num, h, w)
    return tokenizer.decode(grids), caption
