"""``eval.json``: what ``vqtok eval`` measured (docs/formats.md#eval), format version 1
(:data:`SPEC`).

Every key is always present; ``null`` only where the type says so (a metric whose weights
were missing, a PSNR of identical images). Floats are finite.

::

    {
      "format": "vqtok.eval", "format_version": 1, "vqtok_version": str,
      "tokenizer": str,                 # as given to --tokenizer
      "data": str,                      # as given to --data
      "protocol": {                     # how (docs/eval.md)
        "size": int,                    # the side of the square crop
        "preprocessing": str,           # the crop rule, in words
        "reconstruction": str,          # "encode, decode, 8-bit pixels"
        "inception": str | null,        # the weights file's name; null: no rFID
        "reference": str,               # "the same preprocessed originals" or the .npz
        "lpips": str | null,            # "vgg16 v0.1"; null: no LPIPS
        "lite0": str | null,            # the EfficientNet-Lite0 weights; null: no fd_lite0
        "processes": int
      },
      "images": int,                    # images measured
      "failed": [{"path": str, "reason": str}],   # skipped: unreadable, smaller than the crop
      "rfid": float | null,             # Fréchet Inception distance, >= 0 up to rounding
      "fd_lite0": float | null,         # Fréchet distance of EfficientNet-Lite0 features:
                                        #   NOT comparable with rFID (docs/eval.md)
      "lpips": float | null,            # mean over images
      "psnr": float | null,             # dB, of the MSE over all pixels (data range 2)
      "psnr_per_image_mean": float | null,
      "ssim": float,                    # torchmetrics, data range 2
      "usage": float, "perplexity": float, "normalized_entropy": float, "dead_codes": int,
      "codebook_size": int,             # K (per stage)
      "stages": [{"usage": float, "perplexity": float, "normalized_entropy": float,
                  "dead_codes": int}] | null,     # per stage of a multi-stage quantizer
      "tokens": int, "tokens_per_image": int,     # ids, all stages counted
      "worst": [{"name": str, "psnr": float | null}],   # lowest per-image PSNR first
      "notes": [str]                    # why a metric is null
    }
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqtok.formats.jsonfile import read_json, write_json
from vqtok.formats.schema import Const, Float, Int, ListOf, Nullable, Obj, Str, Version, validate

FORMAT = "vqtok.eval"
FORMAT_VERSION = 1

_USAGE = {"usage": Float(min=0, max=1), "perplexity": Float(min=1),
          "normalized_entropy": Float(min=0, max=1), "dead_codes": Int(min=0)}
SPEC = Obj({
    "format": Const(FORMAT, "a vqtok evaluation"),
    "format_version": Version(FORMAT_VERSION),
    "vqtok_version": Str(),
    "tokenizer": Str(), "data": Str(),
    "protocol": Obj({"size": Int(min=1), "preprocessing": Str(), "reconstruction": Str(),
                     "inception": Nullable(Str()), "reference": Str(),
                     "lpips": Nullable(Str()), "lite0": Nullable(Str()),
                     "processes": Int(min=1)}),
    "images": Int(min=1),
    "failed": ListOf(Obj({"path": Str(), "reason": Str()})),
    "rfid": Nullable(Float()), "fd_lite0": Nullable(Float()), "lpips": Nullable(Float()),
    "psnr": Nullable(Float()), "psnr_per_image_mean": Nullable(Float()), "ssim": Float(),
    **_USAGE,
    "codebook_size": Int(min=1),
    "stages": Nullable(ListOf(Obj(_USAGE))),
    "tokens": Int(min=1), "tokens_per_image": Int(min=1),
    "worst": ListOf(Obj({"name": Str(), "psnr": Nullable(Float())})),
    "notes": ListOf(Str()),
})


def validate_eval(doc: Any, source: str = "eval") -> None:
    """Raise :class:`~vqtok.formats.schema.FormatError` (a ValueError) naming the first key
    of ``doc`` that does not follow :data:`SPEC`."""
    validate(doc, SPEC, source)


def write_eval(path: Path, doc: dict[str, Any]) -> Path:
    """Validate ``doc`` and write it to ``path`` atomically."""
    validate_eval(doc)
    return write_json(path, doc, "evaluation")


def read_eval(path: str | Path) -> dict[str, Any]:
    """The checked document of the ``eval.json`` at ``path``."""
    doc = read_json(path)
    validate_eval(doc, str(path))
    return doc
