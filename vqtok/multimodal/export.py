"""The on-disk format of a trained multimodal decoder: a directory, never a pickle.

::

    decoder/
      config.json        what to build and how its vocabulary is laid out
      model.safetensors  the MultimodalDecoder state_dict (safetensors, no code inside)

``config.json`` holds exactly these keys::

    {"format": "vqtok.decoder", "format_version": 1, "vqtok_version": "0.1.0",
     "decoder": {"class_path": "vqtok.multimodal.decoder.MultimodalDecoder",
                 "init_args": {"config": {...DecoderConfig fields...}}},
     "vocabulary": {"text_vocab": 256, "image_codebook_size": 1000, "specials": [...]},
     "image_tokens": [8, 8],          # the (h, w) token grid it was trained to write
     "caption_template": "a photo of a {label}",   # or null
     "extra": {...}}                  # optional, free JSON metadata, not interpreted

Loading reads JSON and safetensors only and rebuilds the model through
:func:`vqtok.registry.build`; the directory is written atomically by
:func:`vqtok.model_dir.save_model_dir`, so a crash leaves the old decoder or the new one,
never half of one.
"""

from __future__ import annotations

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
from vqtok.multimodal.decoder import MultimodalDecoder
from vqtok.multimodal.streams import Vocabulary

FORMAT = "vqtok.decoder"
FORMAT_VERSION = 1
_REQUIRED_KEYS = frozenset({"format", "format_version", "vqtok_version", "decoder",
                            "vocabulary", "image_tokens", "caption_template"})
_OPTIONAL_KEYS = frozenset({"extra"})
_VOCAB_KEYS = frozenset({"text_vocab", "image_codebook_size", "specials"})


class DecoderFormatError(ValueError):
    """A decoder directory that cannot be loaded; the message names the file and why."""


def vocabulary_spec(vocab: Vocabulary) -> dict[str, Any]:
    """The JSON description of ``vocab`` (inverse: ``Vocabulary(**spec)``)."""
    return {"text_vocab": vocab.text_vocab, "image_codebook_size": vocab.image_codebook_size,
            "specials": list(vocab.specials)}


def build_decoder_config(
    model: MultimodalDecoder,
    vocab: Vocabulary,
    image_tokens: tuple[int, int],
    *,
    caption_template: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` content for ``model``; validated exactly as a loaded one is."""
    if not isinstance(model, MultimodalDecoder):
        raise TypeError(f"expected a MultimodalDecoder, got {type(model).__name__}")
    config = {
        **new_header(FORMAT, FORMAT_VERSION),
        "decoder": json_copy(registry.spec_of(model), "decoder init_args"),
        "vocabulary": vocabulary_spec(vocab),
        "image_tokens": [int(s) for s in image_tokens],
        "caption_template": caption_template,
    }
    if extra is not None:
        config["extra"] = json_copy(extra, "extra")
    validate_decoder_config(config, Path(CONFIG_NAME))
    vocab_size = config["decoder"]["init_args"]["config"]["vocab_size"]
    if vocab.size != vocab_size:
        raise ValueError(f"vocabulary of size {vocab.size} does not match the decoder's "
                         f"vocab_size {vocab_size}")
    return config


def validate_decoder_config(config: Any, path: Path) -> None:
    """Raise :class:`DecoderFormatError` (naming ``path``) unless ``config`` follows the
    format: known format and version, exactly the known keys, well-typed values."""

    def fail(problem: str) -> DecoderFormatError:
        return DecoderFormatError(f"{path}: {problem}")

    check_header(config, FORMAT, FORMAT_VERSION, _REQUIRED_KEYS, _OPTIONAL_KEYS, "decoder", fail)
    spec = config["decoder"]
    if not isinstance(spec, dict):
        raise fail(f"'decoder' must be an object with class_path and init_args, got {spec!r}")
    check_keys(spec, {"class_path", "init_args"}, set(), "decoder", fail)
    args = spec["init_args"]
    if not isinstance(args, dict) or not isinstance(args.get("config"), dict):
        raise fail(f"decoder.init_args must be {{'config': {{...}}}}, got {args!r}")
    vocab = config["vocabulary"]
    if not isinstance(vocab, dict):
        raise fail(f"'vocabulary' must be an object, got {vocab!r}")
    check_keys(vocab, _VOCAB_KEYS, set(), "vocabulary", fail)
    for key in ("text_vocab", "image_codebook_size"):
        if not is_int(vocab[key]) or vocab[key] < 1:
            raise fail(f"vocabulary.{key} must be a positive integer, got {vocab[key]!r}")
    if not isinstance(vocab["specials"], list) or not all(
            isinstance(s, str) for s in vocab["specials"]):
        raise fail(f"vocabulary.specials must be a list of strings, got {vocab['specials']!r}")
    grid = config["image_tokens"]
    if not (isinstance(grid, list) and len(grid) == 2 and all(is_int(s) and s >= 1
                                                               for s in grid)):
        raise fail(f"'image_tokens' must be [h, w] with positive integers, got {grid!r}")
    template = config["caption_template"]
    if template is not None and (not isinstance(template, str) or "{label}" not in template):
        raise fail(f"'caption_template' must be null or a string with '{{label}}', got "
                   f"{template!r}")
    if "extra" in config and not isinstance(config["extra"], dict):
        raise fail(f"'extra' must be an object, got {config['extra']!r}")


# ---- save -----------------------------------------------------------------------------


def save_decoder_dir(
    model: MultimodalDecoder,
    vocab: Vocabulary,
    out_dir: str | os.PathLike[str],
    image_tokens: tuple[int, int],
    *,
    caption_template: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` and its vocabulary as a decoder directory at ``out_dir``.

    ``image_tokens`` is the ``(h, w)`` grid the decoder writes (what its tokenizer gives for
    the training images); ``caption_template`` how its captions were made from a label.
    An existing decoder at ``out_dir`` is replaced atomically; a directory holding other
    files is refused rather than deleted.
    """
    config = build_decoder_config(model, vocab, image_tokens, caption_template=caption_template,
                                  extra=extra)
    return save_model_dir(Path(out_dir), config, model, FORMAT, "decoder")


# ---- load -----------------------------------------------------------------------------


def read_decoder_config(path: Path) -> dict[str, Any]:
    """Parse and validate a decoder's ``config.json``."""
    config = read_json(path, DecoderFormatError)
    validate_decoder_config(config, path)
    return config


def load_decoder_dir(
    path: str | os.PathLike[str], device: str = "cpu"
) -> tuple[MultimodalDecoder, Vocabulary, dict[str, Any]]:
    """Rebuild a decoder directory: ``(model in eval mode, vocabulary, config)``.

    Raises :class:`DecoderFormatError` (a ValueError) naming the file for a missing
    directory or file, invalid JSON, an unknown format or key, a class that is not a
    :class:`MultimodalDecoder`, a vocabulary that does not match the model, corrupt or
    foreign weights, or weights that do not match the model exactly (strict loading).
    """
    root = Path(path)
    if not root.is_dir():
        raise DecoderFormatError(f"{root}: not a decoder directory (it does not exist or is "
                                 f"not a directory)")
    config_path = root / CONFIG_NAME
    config = read_decoder_config(config_path)
    try:
        model = registry.build(config["decoder"])
        vocab = Vocabulary(**config["vocabulary"])
    except (ValueError, TypeError) as err:
        raise DecoderFormatError(f"{config_path}: cannot build the decoder: {err}") from err
    if not isinstance(model, MultimodalDecoder):
        raise DecoderFormatError(f"{config_path}: decoder.class_path must name a "
                                 f"MultimodalDecoder, got {config['decoder']['class_path']!r}")
    if vocab.size != model.config.vocab_size:
        raise DecoderFormatError(f"{config_path}: the vocabulary has {vocab.size} ids but the "
                                 f"decoder's vocab_size is {model.config.vocab_size}")
    load_weights(model, root / WEIGHTS_NAME, FORMAT, DecoderFormatError, "decoder")
    return model.to(device).eval(), vocab, config


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DecoderFormatError",
    "build_decoder_config",
    "load_decoder_dir",
    "read_decoder_config",
    "save_decoder_dir",
    "validate_decoder_config",
    "vocabulary_spec",
]
