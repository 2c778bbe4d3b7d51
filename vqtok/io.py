"""The on-disk tokenizer format (DESIGN.md section 5): a directory, never a pickle.

::

    tokenizer/
      config.json        what to build: class paths + init args, image constraints
      model.safetensors  the VQAutoencoder state_dict (safetensors, no code inside)

``config.json`` holds exactly these keys::

    {"format": "vqtok.tokenizer", "format_version": 1, "vqtok_version": "0.1.0",
     "encoder": {"class_path": ..., "init_args": {...}}, "quantizer": {...}, "decoder": {...},
     "image": {"channels": 3, "downsample_factor": 4, "min_size": 4},
     "normalization": {"mean": 0.5, "std": 0.5}, "codebook_size": 1000,
     "extra": {...}}                    # optional, free JSON metadata, not interpreted

Loading reads JSON and safetensors only (no ``pickle``, no ``torch.load``) and rebuilds
modules through :func:`vqtok.registry.build`, so a tokenizer directory cannot make vqtok
import or run code. Saving writes a temporary sibling directory and renames it into place
(on Linux an atomic exchange with an existing tokenizer), so a crash leaves the old
tokenizer or the new one, never half of one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from vqtok import registry
from vqtok.model_dir import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_header,
    check_keys,
    is_int,
    json_copy,
    load_weights,
    new_header,
    read_json,
    save_model_dir,
)
from vqtok.models.autoencoder import VQAutoencoder

FORMAT = "vqtok.tokenizer"
FORMAT_VERSION = 1
_ROLES = ("encoder", "quantizer", "decoder")
_REQUIRED_KEYS = frozenset(
    {"format", "format_version", "vqtok_version", *_ROLES, "image", "normalization",
     "codebook_size"}
)
_OPTIONAL_KEYS = frozenset({"extra"})
_IMAGE_KEYS = frozenset({"channels", "downsample_factor", "min_size"})
_NORMALIZATION_KEYS = frozenset({"mean", "std"})


class TokenizerFormatError(ValueError):
    """A tokenizer directory that cannot be loaded; the message names the file and why."""


# ---- config ---------------------------------------------------------------------------


def build_config(
    model: VQAutoencoder,
    *,
    mean: float = 0.5,
    std: float = 0.5,
    min_size: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` content for ``model``; validated exactly as a loaded one is."""
    if not isinstance(model, VQAutoencoder):
        raise TypeError(f"expected a VQAutoencoder, got {type(model).__name__}")
    config = new_header(FORMAT, FORMAT_VERSION)
    for role in _ROLES:
        config[role] = json_copy(registry.spec_of(getattr(model, role)), f"{role} init_args")
    factor = model.downsample_factor
    config["image"] = {
        "channels": model.in_channels,
        "downsample_factor": factor,
        "min_size": factor if min_size is None else min_size,
    }
    config["normalization"] = {"mean": mean, "std": std}
    config["codebook_size"] = model.codebook_size
    if extra is not None:
        config["extra"] = json_copy(extra, "extra")
    validate_config(config, Path(CONFIG_NAME))
    return config


def validate_config(config: Any, path: Path) -> None:
    """Raise :class:`TokenizerFormatError` (naming ``path``) unless ``config`` follows the
    format: known format and version, exactly the known keys, well-typed values."""

    def fail(problem: str) -> TokenizerFormatError:
        return TokenizerFormatError(f"{path}: {problem}")

    check_header(config, FORMAT, FORMAT_VERSION, _REQUIRED_KEYS, _OPTIONAL_KEYS, "tokenizer",
                 fail)
    for role in _ROLES:
        spec = config[role]
        if not isinstance(spec, dict):
            raise fail(f"{role!r} must be an object with class_path and init_args, got {spec!r}")
        check_keys(spec, {"class_path", "init_args"}, set(), role, fail)
        if not isinstance(spec["class_path"], str):
            raise fail(f"{role}.class_path must be a string, got {spec['class_path']!r}")
        if not isinstance(spec["init_args"], dict):
            raise fail(f"{role}.init_args must be an object, got {spec['init_args']!r}")
    image = config["image"]
    if not isinstance(image, dict):
        raise fail(f"'image' must be an object, got {image!r}")
    check_keys(image, _IMAGE_KEYS, set(), "image", fail)
    for key in sorted(_IMAGE_KEYS):
        if not is_int(image[key]) or image[key] < 1:
            raise fail(f"image.{key} must be a positive integer, got {image[key]!r}")
    norm = config["normalization"]
    if not isinstance(norm, dict):
        raise fail(f"'normalization' must be an object, got {norm!r}")
    check_keys(norm, _NORMALIZATION_KEYS, set(), "normalization", fail)
    for key in ("mean", "std"):
        value = norm[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(
            value
        ):
            raise fail(f"normalization.{key} must be a finite number, got {value!r}")
    if norm["std"] <= 0:
        raise fail(f"normalization.std must be > 0, got {norm['std']!r}")
    if not is_int(config["codebook_size"]) or config["codebook_size"] < 1:
        raise fail(f"'codebook_size' must be a positive integer, got {config['codebook_size']!r}")
    if "extra" in config and not isinstance(config["extra"], dict):
        raise fail(f"'extra' must be an object, got {config['extra']!r}")


def read_config(path: Path) -> dict[str, Any]:
    """Parse and validate ``config.json``."""
    config = read_json(path, TokenizerFormatError)
    validate_config(config, path)
    return config


# ---- save -----------------------------------------------------------------------------


def save_tokenizer_dir(
    model: VQAutoencoder,
    out_dir: str | os.PathLike[str],
    *,
    mean: float = 0.5,
    std: float = 0.5,
    min_size: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a tokenizer directory at ``out_dir``; returns its path.

    ``extra`` is free JSON metadata stored under ``"extra"`` (training run, metrics).
    An existing tokenizer at ``out_dir`` is replaced; a directory holding anything other
    than ``config.json`` and ``model.safetensors`` is refused rather than deleted.
    """
    config = build_config(model, mean=mean, std=std, min_size=min_size, extra=extra)
    return save_model_dir(Path(out_dir), config, model, FORMAT, "tokenizer")


# ---- load -----------------------------------------------------------------------------


def load_tokenizer_dir(
    path: str | os.PathLike[str], device: str = "cpu"
) -> tuple[VQAutoencoder, dict[str, Any]]:
    """Rebuild the model of a tokenizer directory: ``(model in eval mode, config)``.

    Raises :class:`TokenizerFormatError` naming the file for a missing directory or file,
    invalid JSON, an unknown format version or key, an unknown class, corrupt or foreign
    weights, or weights that do not match the model exactly (strict loading).
    """
    root = Path(path)
    if not root.is_dir():
        raise TokenizerFormatError(f"{root}: not a tokenizer directory (it does not exist "
                                   f"or is not a directory)")
    config_path = root / CONFIG_NAME
    config = read_config(config_path)
    parts = {}
    for role in _ROLES:
        try:
            parts[role] = registry.build(config[role])
        except (ValueError, TypeError) as err:
            raise TokenizerFormatError(f"{config_path}: cannot build the {role}: {err}") from err
    try:
        model = VQAutoencoder(parts["encoder"], parts["quantizer"], parts["decoder"])
    except (ValueError, TypeError) as err:
        raise TokenizerFormatError(f"{config_path}: inconsistent modules: {err}") from err
    _check_model_matches(model, config, config_path)
    load_weights(model, root / WEIGHTS_NAME, FORMAT, TokenizerFormatError, "tokenizer")
    return model.to(device).eval(), config


def _check_model_matches(model: VQAutoencoder, config: dict[str, Any], path: Path) -> None:
    stated = {
        "image.channels": (config["image"]["channels"], model.in_channels),
        "image.downsample_factor": (config["image"]["downsample_factor"],
                                    model.downsample_factor),
        "codebook_size": (config["codebook_size"], model.codebook_size),
    }
    for key, (written, built) in stated.items():
        if written != built:
            raise TokenizerFormatError(
                f"{path}: {key} is {written} but the modules it describes give {built}"
            )


__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "TokenizerFormatError",
    "build_config",
    "load_tokenizer_dir",
    "read_config",
    "save_tokenizer_dir",
    "validate_config",
]
