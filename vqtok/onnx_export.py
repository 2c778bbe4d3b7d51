"""A tokenizer as two ONNX graphs, for inference servers (docs/formats.md#onnx).

``encoder.onnx`` maps model-space pixels ``(B, C, H, W)`` (``H`` and ``W`` multiples of the
downsampling factor ``f``) to int64 ids ``(B, H/f, W/f)`` (``(B, H/f, W/f, S)`` for an
``S``-stage quantizer); ``decoder.onnx`` maps such ids back to model-space pixels. Batch
and both spatial sides stay open (dynamic axes). Both graphs come from
``torch.onnx.export(dynamo=True)``, which traces the model with ``torch.export``; the
quantizers skip their value checks and search the codebook without a loop over the rows
while ``torch.compiler.is_exporting()`` is true. Plain torch: nothing here imports
Lightning; ``onnx`` and ``onnxscript`` (the ``onnx`` extra) are imported when it runs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vqtok.extras import require_extra
from vqtok.formats.atomic import atomic_directory
from vqtok.formats.outputs import check_new_output
from vqtok.tokenizers import ImageTokenizer
from vqtok.version import vqtok_version

ENCODER_NAME = "encoder.onnx"
DECODER_NAME = "decoder.onnx"
FORMAT = "vqtok.onnx"
OPSET = 18
"""The ONNX opset of both graphs (onnxruntime 1.16 and later run it)."""
_EXAMPLE_TOKENS = 4  # tokens per side of the example input traced
log = logging.getLogger(__name__)


def require_onnx() -> None:
    """A one-line :class:`~vqtok.extras.MissingExtraError` naming ``pip install
    vqtok[onnx]`` unless the exporter's packages import."""
    require_extra("onnx", "ONNX export", "onnx", "onnxscript")


class _Encode(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: Tensor) -> Tensor:
        return self.model.encode(pixels).indices


class _Decode(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor) -> Tensor:
        return self.model.decode_indices(ids)


def export_onnx(tokenizer: ImageTokenizer, out_dir: str | os.PathLike[str], *,
                overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``out_dir/encoder.onnx`` and ``out_dir/decoder.onnx`` for ``tokenizer``'s
    model (a folder written atomically); returns their paths.

    Each graph records the tokenizer's facts in its metadata (``vqtok.json``: downsampling
    factor, channels, codebook size, stages, normalisation, smallest side). Raises
    ValueError when ``out_dir`` exists and ``overwrite`` is false, or exists and holds
    other files; :class:`~vqtok.extras.MissingExtraError` (an ImportError) naming ``pip
    install vqtok[onnx]`` without the extra; RuntimeError, in one line, when the exporter
    cannot trace the model.
    """
    require_onnx()
    target = check_new_output(out_dir, overwrite=overwrite, folder=True)
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir()
                         if p.name not in (ENCODER_NAME, DECODER_NAME))
        if foreign:
            raise ValueError(f"{target} holds files that are not an ONNX export {foreign}; "
                             f"refusing to replace it (choose an empty or new folder)")
    model = copy.deepcopy(tokenizer.model).to("cpu", torch.float32).eval()
    f, channels = tokenizer.downsample_factor, tokenizer.channels
    side = _EXAMPLE_TOKENS * max(1, -(-tokenizer.min_size // (_EXAMPLE_TOKENS * f)))
    pixels = torch.zeros(2, channels, side * f, side * f)
    stages = tokenizer.num_stages
    ids = torch.zeros(2, side, side, *(() if stages is None else (stages,)), dtype=torch.int64)
    batch, height, width = (torch.export.Dim(name, min=1) for name in ("batch", "h", "w"))
    metadata = {"vqtok.json": json.dumps(_facts(tokenizer), sort_keys=True)}
    with atomic_directory(target) as tmp:
        _export(_Encode(model), pixels, {"pixels": {0: batch, 2: f * height, 3: f * width}},
                "pixels", "ids", tmp / ENCODER_NAME, metadata)
        _export(_Decode(model), ids, {"ids": {0: batch, 1: height, 2: width}},
                "ids", "pixels", tmp / DECODER_NAME, metadata)
    return target / ENCODER_NAME, target / DECODER_NAME


def _facts(tokenizer: ImageTokenizer) -> dict[str, Any]:
    norm = tokenizer.normalization
    return {"format": FORMAT, "vqtok_version": vqtok_version(),
            "downsample_factor": tokenizer.downsample_factor, "channels": tokenizer.channels,
            "codebook_size": tokenizer.codebook_size, "num_stages": tokenizer.num_stages,
            "normalization": {"mean": norm.mean, "std": norm.std},
            "min_size": tokenizer.min_size}


def _export(module: nn.Module, example: Tensor, dynamic: dict[str, Any], input_name: str,
            output_name: str, path: Path, metadata: dict[str, str]) -> None:
    # The exporter prints its progress and logs warnings about packages vqtok does not use
    # (torchvision); vqtok's commands print what they did, once.
    log.info("exporting %s (tracing takes seconds to minutes)", path.name)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
              torch.no_grad()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (example,), dynamo=True, dynamic_shapes=dynamic, opset_version=OPSET,
                input_names=[input_name], output_names=[output_name], verbose=False)
    except Exception as err:  # the exporter's own errors run to pages: one line here
        lines = str(err).strip().splitlines()
        raise RuntimeError(f"{path.name}: the ONNX exporter failed: "
                           f"{lines[0] if lines else type(err).__name__} (--debug shows the "
                           f"exporter's report)") from err
    finally:
        exporter_log.setLevel(level)
    program.model.metadata_props.update(metadata)
    program.save(str(path), external_data=False)
