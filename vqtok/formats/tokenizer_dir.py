"""The on-disk tokenizer format: a directory, never a pickle (docs/formats.md#tokenizer).

::

    tokenizer/
      config.json        what to build: class paths + init args, image constraints
      model.safetensors  the VQAutoencoder state_dict (safetensors, no code inside)

``config.json`` holds exactly these keys (:data:`SPEC`)::

    {"format": "vqtok.tokenizer", "format_version": 1, "vqtok_version": "0.1.0",
     "encoder": {"class_path": ..., "init_args": {...}}, "quantizer": {...}, "decoder": {...},
     "image": {"channels": 3, "downsample_factor": 4, "min_size": 4},
     "normalization": {"mean": 0.5, "std": 0.5}, "codebook_size": 1000,
     "extra": {...}}                    # optional, free JSON metadata, not interpreted

A video tokenizer (a causal :class:`~vqtok.models.VideoEncoder` and
:class:`~vqtok.models.VideoDecoder`) writes the same keys plus ``"video":
{"temporal_factor": 4}``: ``image`` then describes each frame, and a clip of ``1 +
temporal_factor * k`` frames gives ``1 + k`` latent frames (docs/video.md). Loading
checks the kind: an image tokenizer directory is refused where a video one is expected,
and the other way round, with a message that names the class to use.

Loading reads JSON and safetensors only (no ``pickle``, no ``torch.load``) and rebuilds
modules through :func:`vqtok.registry.build`, so a tokenizer directory cannot make vqtok
import or run code. Saving writes a temporary sibling directory and renames it into place
(on Linux an atomic exchange with an existing tokenizer), so a crash leaves the old
tokenizer or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from vqtok import registry
from vqtok.formats import model_dir
from vqtok.formats.hub import resolve_model_dir
from vqtok.formats.jsonfile import json_copy, read_json
from vqtok.formats.model_dir import CONFIG_NAME, MODULE_SPEC, WEIGHTS_NAME
from vqtok.formats.schema import Float, FormatError, Int, Obj, validate
from vqtok.models.autoencoder import VQAutoencoder

FORMAT = "vqtok.tokenizer"
FORMAT_VERSION = 1
_ROLES = ("encoder", "quantizer", "decoder")

SPEC = Obj({
    **model_dir.header_spec(FORMAT, FORMAT_VERSION, "tokenizer"),
    **{role: MODULE_SPEC for role in _ROLES},
    "image": Obj({"channels": Int(min=1), "downsample_factor": Int(min=1),
                  "min_size": Int(min=1)}),
    "normalization": Obj({"mean": Float(), "std": Float(above=0)}),
    "codebook_size": Int(min=1),
}, optional={**model_dir.OPTIONAL_SPEC, "video": Obj({"temporal_factor": Int(min=1)})})
"""``config.json`` of a tokenizer directory."""

DEFAULT_NORMALIZATION = {"mean": 0.5, "std": 0.5}
"""The ``normalization`` of a model trained on pixels mapped to [-1, 1], what every vqtok
dataset yields (:data:`vqtok.tokenizers.pixels.DEFAULT_NORMALIZATION`)."""


class TokenizerFormatError(FormatError):
    """A tokenizer directory that cannot be loaded; the message names the file and why."""


# ---- config ---------------------------------------------------------------------------


def build_config(
    model: VQAutoencoder,
    *,
    normalization: Any = None,
    min_size: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` content for ``model``; validated exactly as a loaded one is."""
    if not isinstance(model, VQAutoencoder):
        raise TypeError(f"expected a VQAutoencoder, got {type(model).__name__}")
    config = model_dir.new_header(FORMAT, FORMAT_VERSION)
    for role in _ROLES:
        config[role] = json_copy(registry.spec_of(getattr(model, role)), f"{role} init_args")
    factor = model.downsample_factor
    config["image"] = {
        "channels": model.in_channels,
        "downsample_factor": factor,
        "min_size": factor if min_size is None else min_size,
    }
    config["normalization"] = (dict(DEFAULT_NORMALIZATION) if normalization is None else
                               {"mean": normalization.mean, "std": normalization.std})
    config["codebook_size"] = model.codebook_size
    if is_video_model(model):
        config["video"] = {"temporal_factor": int(model.encoder.temporal_factor)}
    if extra is not None:
        config["extra"] = json_copy(extra, "extra")
    validate(config, SPEC, CONFIG_NAME, TokenizerFormatError)
    return config


def is_video_model(model: VQAutoencoder) -> bool:
    """Whether ``model`` encodes clips (its encoder has a ``temporal_factor``)."""
    return hasattr(model.encoder, "temporal_factor")


def read_config(path: Path) -> dict[str, Any]:
    """Parse and validate a tokenizer's ``config.json``."""
    config = read_json(path, TokenizerFormatError)
    validate(config, SPEC, str(path), TokenizerFormatError)
    return config


# ---- save -----------------------------------------------------------------------------


def save_tokenizer_dir(
    model: VQAutoencoder,
    out_dir: str | os.PathLike[str],
    *,
    normalization: Any = None,
    min_size: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a tokenizer directory at ``out_dir``; returns its path.

    ``normalization`` is the pixel normalisation the model was trained with (a
    :class:`~vqtok.tokenizers.pixels.Normalization`, or anything with a ``mean`` and a
    ``std``; None: :data:`DEFAULT_NORMALIZATION`); ``extra`` is
    free JSON metadata stored under ``"extra"`` (training run, metrics). An existing
    tokenizer at ``out_dir`` is replaced; a directory holding anything other than
    ``config.json`` and ``model.safetensors`` is refused rather than deleted.
    """
    config = build_config(model, normalization=normalization, min_size=min_size, extra=extra)
    return model_dir.save_model_dir(Path(out_dir), config, model, FORMAT, "tokenizer")


# ---- load -----------------------------------------------------------------------------


def load_tokenizer_dir(
    path: str | os.PathLike[str], device: str = "cpu", revision: str | None = None,
    video: bool | None = None,
) -> tuple[VQAutoencoder, dict[str, Any]]:
    """Rebuild the model of a tokenizer directory: ``(model in eval mode, config)``.

    ``path``: a local directory, or a Hugging Face Hub repo id ``"org/name"`` at
    ``revision`` (:func:`vqtok.formats.hub.resolve_model_dir`; the ``hub`` extra).
    Raises :class:`TokenizerFormatError` naming the file for a missing directory or file,
    invalid JSON, an unknown format version or key, an unknown class, corrupt or foreign
    weights, a model over ``MAX_MODEL_BYTES`` or weights that do not match it exactly
    (both judged before the model is allocated: :func:`model_dir.build_and_load`); and for a
    repo id that cannot be resolved. ``video``: True accepts only a video tokenizer, False
    only an image tokenizer (a one-line error naming the class to use), None either.
    """
    root = resolve_model_dir(path, "tokenizer", TokenizerFormatError, revision)
    config_path, config = model_dir.read_model_config(root, SPEC, "tokenizer",
                                                      TokenizerFormatError)
    if video is not None and ("video" in config) != video:
        found, use = (("a video", "vqtok.VideoTokenizer") if "video" in config
                      else ("an image", "vqtok.ImageTokenizer"))
        raise TokenizerFormatError(f"{root} is {found} tokenizer; load it with "
                                   f"{use}.from_pretrained")

    def build() -> VQAutoencoder:
        parts = {role: model_dir.build_module(config[role], role, config_path,
                                              TokenizerFormatError) for role in _ROLES}
        try:
            model = VQAutoencoder(parts["encoder"], parts["quantizer"], parts["decoder"])
        except (ValueError, TypeError) as err:
            raise TokenizerFormatError(f"{config_path}: inconsistent modules: {err}") from err
        _check_model_matches(model, config, config_path)
        return model

    model = model_dir.build_and_load(build, root, FORMAT, TokenizerFormatError, "tokenizer",
                                     config.get(model_dir.WEIGHTS_SHA256))
    return model.to(device).eval(), config


def _check_model_matches(model: VQAutoencoder, config: dict[str, Any], path: Path) -> None:
    stated = {
        "image.channels": (config["image"]["channels"], model.in_channels),
        "image.downsample_factor": (config["image"]["downsample_factor"],
                                    model.downsample_factor),
        "codebook_size": (config["codebook_size"], model.codebook_size),
        "video.temporal_factor": (config.get("video", {}).get("temporal_factor"),
                                  getattr(model.encoder, "temporal_factor", None)),
    }
    for key, (written, built) in stated.items():
        if written != built:
            raise TokenizerFormatError(
                f"{path}: {key} is {written} but the modules it describes give {built}"
            )


def fingerprint(tokenizer_dir: str | os.PathLike[str], revision: str | None = None) -> str:
    """SHA-256 of what a tokenizer's ids depend on: its config (modules, image and
    normalisation; not the free ``extra`` metadata, the vqtok version or the file checksum)
    and its tensors by name. Two exports of the same weights share it even when the files'
    bytes differ."""
    root = resolve_model_dir(tokenizer_dir, "tokenizer", TokenizerFormatError, revision)
    config = read_config(root / CONFIG_NAME)
    for key in ("extra", "vqtok_version", model_dir.WEIGHTS_SHA256):
        config.pop(key, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    with safe_open(str(root / WEIGHTS_NAME), framework="np") as f:
        for name in sorted(f.keys()):
            array = f.get_tensor(name)
            digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
