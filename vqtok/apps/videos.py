"""Clips (animated GIFs, frame folders) -> one ``.npz`` of ``(t, h, w)`` token grids, and
back to animated GIFs: what ``vqtok encode`` and ``vqtok decode`` do with a video
tokenizer (docs/video.md#commands).

The ``.npz`` is the tokens format of :mod:`vqtok.formats.tokens` with its video keys
(``frames``, ``temporal_factor``); GIFs are read by :func:`vqtok.formats.videos.load_video`
and written by :func:`vqtok.formats.videos.save_gif`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vqtok.apps.files import EncodeSummary, find_inputs, output_paths
from vqtok.formats.outputs import check_new_output, check_output_folder, check_outputs
from vqtok.formats.tokens import read_tokens, write_tokens
from vqtok.formats.videos import check_frame_ms, frame_files, save_gif, video_sources
from vqtok.tokenizers import VideoTokenizer

log = logging.getLogger(__name__)


def find_clips(paths_or_folders: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, str]]:
    """``(path, name)`` of every clip to encode. A file is a clip (an animated GIF); a
    folder holding GIFs or frame folders gives those (not recursively); a folder holding
    frame images directly is one clip. ValueError for a missing path or when nothing is
    found."""
    def in_folder(folder: Path) -> list[Path]:
        return video_sources(folder) or ([folder] if frame_files(folder) else [])

    return find_inputs(paths_or_folders, in_folder, "GIFs or frame folders")


def encode_clips(paths_or_folders: Sequence[str | os.PathLike[str]], tokenizer: VideoTokenizer,
                 out_npz: str | os.PathLike[str], progress: bool = True,
                 overwrite: bool = False,
                 also_inputs: Sequence[str | os.PathLike[str]] = ()) -> EncodeSummary:
    """Encode clips (:func:`find_clips`) to ``out_npz``, one at a time. ``out_npz`` may not
    be, or lie inside, one of the clips or ``also_inputs`` (the tokenizer's directory), nor
    exist unless ``overwrite`` (checked before anything is
    read). A clip that cannot be encoded (unreadable, a frame count or size the tokenizer
    does not take) is logged, listed in the summary and the file, and the others go on."""
    clips = find_clips(paths_or_folders)
    out = check_new_output(out_npz, inputs=[*also_inputs, *(path for path, _ in clips)],
                           overwrite=overwrite)
    names, paths, sizes, frames, grids = [], [], [], [], []
    failed: list[tuple[str, str]] = []
    for path, name in tqdm(clips, unit="clip", desc="encode", disable=not progress):
        try:
            pixels = tokenizer.frames(path)
            ids = tokenizer.encode(pixels)
        except ValueError as err:
            reason = str(err).removeprefix(f"{path}: ")
            log.warning("skipping %s: %s", path, reason)
            failed.append((str(path), reason))
            continue
        names.append(name)
        paths.append(str(path))
        sizes.append(tuple(pixels.shape[1:3]))
        frames.append(int(pixels.shape[0]))
        grids.append(ids.numpy())
    write_tokens(out, names=names, paths=paths, sizes=sizes, grids=grids, failed=failed,
                 codebook_size=tokenizer.codebook_size,
                 downsample_factor=tokenizer.downsample_factor,
                 num_stages=tokenizer.num_stages, frames=frames,
                 temporal_factor=tokenizer.temporal_factor)
    return EncodeSummary(out, len(names), sum(int(g.size) for g in grids), failed, unit="clips")


def decode_clips(npz: str | os.PathLike[str], tokenizer: VideoTokenizer,
                 out: str | os.PathLike[str], progress: bool = False, overwrite: bool = False,
                 duration_ms: int = 100,
                 also_inputs: Sequence[str | os.PathLike[str]] = ()) -> list[Path]:
    """Decode the clips of a tokens ``.npz`` to animated GIFs: ``out`` ending in ``.gif``
    is the file of a single clip; otherwise a folder that gets one ``NAME.gif`` per clip
    (``walk.gif`` -> ``out/walk.gif``). Everything is checked before a file is written:
    that a video tokenizer with this codebook wrote the file, the clips' sizes against
    the tokenizer's budget, and the outputs (none may exist unless ``overwrite``, nor be or
    lie inside the tokens file or ``also_inputs``, the tokenizer's directory). Each GIF is
    written atomically; ``duration_ms`` is checked first."""
    check_frame_ms(duration_ms)
    tokens = read_tokens(npz)
    if tokens.frames is None:
        raise ValueError(f"{npz}: images written by an image tokenizer, not clips; decode "
                         f"them with that image tokenizer")
    made = (tokens.codebook_size, tokens.downsample_factor, tokens.temporal_factor,
            tokens.num_stages)
    here = (tokenizer.codebook_size, tokenizer.downsample_factor, tokenizer.temporal_factor,
            tokenizer.num_stages or 1)
    if made != here:
        raise ValueError(f"{npz}: clips made with codebook_size, downsample_factor, "
                         f"temporal_factor, num_stages = {made}, but the tokenizer has {here}")
    for name, count, (height, width) in zip(tokens.names, tokens.frames, tokens.sizes):
        tokenizer.tokens_shape(count, height, width)  # within the budget, else a ValueError
    out = Path(out)
    inputs = [Path(npz), *map(Path, also_inputs)]
    if out.suffix.lower() == ".gif":
        if len(tokens.names) != 1:
            raise ValueError(f"{npz} holds {len(tokens.names)} clips; give a folder as the "
                             f"output to get one GIF per clip")
        targets = check_outputs([out], inputs=inputs, overwrite=overwrite)
    else:
        out = check_output_folder(out, inputs=inputs)
        targets = check_outputs(output_paths(tokens.names, out, str(npz), suffix=".gif"),
                                inputs=inputs, overwrite=overwrite)
    for target, ids in tqdm(list(zip(targets, tokens.ids)), unit="clip", desc="decode",
                            disable=not progress):
        target.parent.mkdir(parents=True, exist_ok=True)
        save_gif(np.ascontiguousarray(tokenizer.decode(ids)), target, duration_ms=duration_ms)
    return targets
