"""``vqtok generate``: text to image with a trained language model, written as PNG files,
or text to video (``--video``), written as animated GIFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vqtok.formats.atomic import atomic_write
from vqtok.formats.outputs import check_outputs
from vqtok.formats.videos import gif_bytes
from vqtok.lm.generation import generate_from_prompt, video_from_prompt
from vqtok.validation import check_positive


def output_paths(out: str | Path, num: int, suffix: str = ".png") -> list[Path]:
    """``out`` itself for one output, else ``out_000.png``, ``out_001.png``, ... (``suffix``
    when ``out`` has none)."""
    out = Path(out)
    if num == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i:03d}{out.suffix or suffix}") for i in range(num)]


def write_generated(lm: str, tokenizer: str, prompt: str, out: str, *, num: int = 1,
                    temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                    raw: bool = False, device: str = "cpu", overwrite: bool = False,
                    video: bool = False, frames: int | None = None,
                    frame_ms: int = 100) -> str:
    """Generate ``num`` images for ``prompt`` and write them as PNGs, or with ``video``
    ``num`` clips of ``frames`` frames written as animated GIFs of ``frame_ms`` per frame
    (each file atomically; an existing file only with ``overwrite``, never the LM's or
    the tokenizer's directory nor a file in them; checked before generating); returns a
    one-line summary."""
    check_positive(num=num)
    if not video and frames is not None:
        raise ValueError("frames is for videos: add --video")
    paths = check_outputs(output_paths(out, num, ".gif" if video else ".png"),
                          inputs=[Path(lm), Path(tokenizer)], overwrite=overwrite)
    if video:
        gif_bytes(np.zeros((1, 1, 1), np.uint8), frame_ms)  # a bad frame_ms fails before work
        clips, caption = video_from_prompt(
            lm, tokenizer, prompt, frames=frames, num=num, temperature=temperature,
            top_k=top_k, seed=seed, raw_prompt=raw, device=device)
        for clip, path in zip(clips, paths):
            data = gif_bytes(clip, frame_ms)
            atomic_write(path, lambda f, data=data: f.write(data))
        return (f"prompt {caption!r}: wrote {len(paths)} GIF(s) of {len(clips[0])} frames: "
                f"{', '.join(map(str, paths))}")
    images, caption = generate_from_prompt(
        lm, tokenizer, prompt, num=num, temperature=temperature, top_k=top_k, seed=seed,
        raw_prompt=raw, device=device)
    for image, path in zip(images, paths):
        atomic_write(path, lambda f, image=image: image.save(f, format="PNG"))
    return f"prompt {caption!r}: wrote {len(paths)} image(s): {', '.join(map(str, paths))}"
