"""The decoder's command-line pieces, wired into ``vqtok`` by :mod:`vqtok.cli`.

- :func:`run_decoder_lightning`: ``vqtok decoder fit|validate|test --config ...``, a
  LightningCLI over :class:`~vqtok.multimodal.training.DecoderModule` and
  :class:`~vqtok.multimodal.training.CaptionImageDataModule`; at the end of ``fit`` the
  decoder is exported to ``<run dir>/decoder`` (or ``--export_dir``).
- :func:`add_generate_parser`: ``vqtok generate --decoder DIR --tokenizer DIR --prompt TEXT
  --out out.png``, text to image through the constrained :func:`generate_image`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

log = logging.getLogger("vqtok")


# ---- LightningCLI ---------------------------------------------------------------------


def run_decoder_lightning(argv: Sequence[str]) -> object:
    """Run ``fit``/``validate``/``test`` for the decoder; returns the LightningCLI object."""
    from lightning.pytorch.cli import LightningCLI

    from vqtok.multimodal.training import CaptionImageDataModule, DecoderModule

    class DecoderCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--export_dir", default=None,
                help="Where `fit` exports the trained decoder (default: <run dir>/decoder).")
            # One position scheme for model and streams; the vocabulary follows the tokenizer.
            parser.link_arguments("model.position_scheme", "data.position_scheme")
            parser.link_arguments("data.image_codebook_size", "model.image_codebook_size",
                                  apply_on="instantiate")

        def after_fit(self) -> None:
            if not self.trainer.is_global_zero:
                return
            config = self.config[self.config.subcommand]
            out = config.get("export_dir") or Path(_run_dir(self.trainer)) / "decoder"
            export_trained(self.model, self.datamodule, out)
            log.info("decoder exported to %s", out)

    return DecoderCLI(
        DecoderModule,
        CaptionImageDataModule,
        args=list(argv),
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"default_root_dir": "runs"},
        parser_kwargs={"description": "Train, validate or test a vqtok multimodal decoder on "
                                      "caption + image token streams."},
    )


def _run_dir(trainer: object) -> str:
    from vqtok.cli import run_dir

    return run_dir(trainer)


def export_trained(module: object, datamodule: object, out_dir: str | Path,
                   extra: dict | None = None) -> Path:
    """Export a trained DecoderModule with what its CaptionImageDataModule knows: the token
    grid, the caption template and class names, and which tokenizer made the tokens (plus
    any ``extra`` JSON metadata)."""
    from vqtok.multimodal.export import save_decoder_dir

    extra = {
        "labels": list(datamodule.class_names),  # type: ignore[attr-defined]
        "tokenizer": {"path": str(datamodule.tokenizer_dir),  # type: ignore[attr-defined]
                      "sha256": datamodule.fingerprint},  # type: ignore[attr-defined]
        **(extra or {}),
    }
    return save_decoder_dir(
        module.model, module.vocab, out_dir,  # type: ignore[attr-defined]
        datamodule.image_tokens,  # type: ignore[attr-defined]
        caption_template=datamodule.caption_template,  # type: ignore[attr-defined]
        extra=extra)


# ---- generate -------------------------------------------------------------------------


def expand_prompt(prompt: str, template: str | None) -> str:
    """The caption the decoder was trained on for ``prompt``: ``template`` filled with it
    ("ankle boot" -> "a photo of an ankle boot"), unless ``prompt`` already starts like the
    template does, or there is no template. Raises ValueError for an empty prompt."""
    from vqtok.multimodal.training import caption_for

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
    from vqtok.multimodal.decoder import generate_image
    from vqtok.multimodal.export import load_decoder_dir
    from vqtok.multimodal.training import tokenizer_fingerprint
    from vqtok.tokenizer import ImageTokenizer

    if num < 1 or temperature < 0 or (top_k is not None and top_k < 1):
        raise ValueError(f"need num >= 1, temperature >= 0 and top_k >= 1, got {num}, "
                         f"{temperature}, {top_k}")
    if not prompt.strip():
        raise ValueError(f"prompt must be non-empty text, got {prompt!r}")
    model, vocab, config = load_decoder_dir(decoder_dir, device=device)
    tokenizer = ImageTokenizer.from_pretrained(tokenizer_dir, device=device)
    if vocab.image_codebook_size != tokenizer.codebook_size:
        raise ValueError(
            f"decoder {decoder_dir} writes image codes of a codebook of "
            f"{vocab.image_codebook_size} but tokenizer {tokenizer_dir} has "
            f"{tokenizer.codebook_size} codes; use the tokenizer the decoder was trained with")
    trained_with = config.get("extra", {}).get("tokenizer", {}).get("sha256")
    if trained_with and trained_with != tokenizer_fingerprint(tokenizer_dir):
        log.warning("tokenizer %s is not the one decoder %s was trained with (%s); the images "
                    "will likely be meaningless", tokenizer_dir, decoder_dir,
                    config["extra"]["tokenizer"].get("path"))
    caption = prompt.strip() if raw_prompt else expand_prompt(prompt, config["caption_template"])
    h, w = config["image_tokens"]
    generator = torch.Generator(device=device).manual_seed(seed)
    grids = generate_image(model, vocab, [caption] * num, h, w, temperature=temperature,
                           top_k=top_k, generator=generator)  # (num, h, w)
    return tokenizer.decode(grids), caption


def output_paths(out: str | Path, num: int) -> list[Path]:
    """``out`` itself for one image, else ``out_000.png``, ``out_001.png``, ..."""
    out = Path(out)
    if num == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i:03d}{out.suffix or '.png'}") for i in range(num)]


def write_generated(args: argparse.Namespace) -> str:
    """Generate for ``vqtok generate``'s arguments, write the PNGs; returns a summary."""
    images, caption = generate_from_prompt(
        args.decoder, args.tokenizer, args.prompt, num=args.num, temperature=args.temperature,
        top_k=args.top_k, seed=args.seed, raw_prompt=args.raw, device=args.device)
    paths = output_paths(args.out, len(images))
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for image, path in zip(images, paths):
        image.save(path, format="PNG")
    return f"prompt {caption!r}: wrote {len(paths)} image(s): {', '.join(map(str, paths))}"


def add_generate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``vqtok generate`` on ``subparsers``; :mod:`vqtok.cli` sets its handler."""
    p = subparsers.add_parser(
        "generate", help="generate images from a text prompt with a trained decoder",
        description="Text to image: the decoder writes one token grid per image after the "
                    "caption, the tokenizer decodes it to pixels.")
    p.add_argument("--decoder", required=True, help="a decoder directory (`vqtok decoder fit`)")
    p.add_argument("--tokenizer", required=True, help="the tokenizer the decoder was trained on")
    p.add_argument("--prompt", required=True,
                   help="a class name such as 'ankle boot' (put into the decoder's caption "
                        "template) or a whole caption")
    p.add_argument("--out", required=True,
                   help="output PNG; with --num N > 1, OUT_000.png ... are written")
    p.add_argument("--num", type=int, default=1, help="images to generate (default 1)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy (default 1)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest codes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true",
                   help="feed the prompt as is, without the caption template")
    p.add_argument("--device", default="cpu")
    return p


__all__ = [
    "add_generate_parser",
    "expand_prompt",
    "export_trained",
    "generate_from_prompt",
    "output_paths",
    "run_decoder_lightning",
    "write_generated",
]
