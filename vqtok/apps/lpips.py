"""``vqtok lpips convert``: the LPIPS weights file from the two published artefacts
(docs/training.md#lpips). Nothing is downloaded: the user brings both files."""

from __future__ import annotations

import os
from pathlib import Path

from vqtok.formats.lpips_weights import lpips_weights_from_files, write_lpips_weights
from vqtok.formats.outputs import check_new_output


def convert_lpips(vgg: str | os.PathLike[str], heads: str | os.PathLike[str],
                  out: str | os.PathLike[str], *, overwrite: bool = False) -> str:
    """Write the LPIPS weights file ``out`` from a torchvision VGG16 state dict and the
    lpips package's VGG heads; an existing ``out`` is replaced only with ``overwrite``
    (checked before anything is read). Returns a one-line summary."""
    out = check_new_output(out, inputs=[Path(vgg), Path(heads)], overwrite=overwrite)
    tensors = lpips_weights_from_files(vgg, heads)
    write_lpips_weights(out, tensors, sources={"vgg": Path(vgg), "heads": Path(heads)})
    count = sum(t.numel() for t in tensors.values())
    return (f"wrote {out}: LPIPS (VGG16) weights, {len(tensors)} tensors, {count:,} values; "
            f"load it with vqtok.models.lpips.LPIPS.from_file")
