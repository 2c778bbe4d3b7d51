"""``vqtok generate``: text to image, written as PNG files."""

from __future__ import annotations

from pathlib import Path

from vqtok.formats.atomic import atomic_write
from vqtok.formats.outputs import check_outputs
from vqtok.generation import generate_from_prompt

__all__ = ["output_paths", "write_generated"]


def output_paths(out: str | Path, num: int) -> list[Path]:
    """``out`` itself for one image, else ``out_000.png``, ``out_001.png``, ..."""
    out = Path(out)
    if num == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i:03d}{out.suffix or '.png'}") for i in range(num)]


def write_generated(decoder: str, tokenizer: str, prompt: str, out: str, *, num: int = 1,
                    temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                    raw: bool = False, device: str = "cpu", overwrite: bool = False) -> str:
    """Generate ``num`` images for ``prompt``, write them as PNGs (each atomically; an
    existing file only with ``overwrite``, checked before generating); returns a one-line
    summary."""
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive int, got {num!r}")
    paths = check_outputs(output_paths(out, num), overwrite=overwrite)
    images, caption = generate_from_prompt(
        decoder, tokenizer, prompt, num=num, temperature=temperature, top_k=top_k, seed=seed,
        raw_prompt=raw, device=device)
    for image, path in zip(images, paths):
        atomic_write(path, lambda f, image=image: image.save(f, format="PNG"))
    return f"prompt {caption!r}: wrote {len(paths)} image(s): {', '.join(map(str, paths))}"
