"""The on-disk format of a trained multimodal decoder: a directory, never a pickle
(docs/formats.md#decoder).

::

    decoder/
      config.json        what to build and how its vocabulary is laid out
      model.safetensors  the MultimodalDecoder state_dict (safetensors, no code inside)

``config.json`` holds exactly these keys (:data:`SPEC`)::

    {"format": "vqtok.decoder", "format_version": 1, "vqtok_version": "0.1.0",
     "decoder": {"class_path": "vqtok.multimodal.decoder.MultimodalDecoder",
                 "init_args": {"config": {...DecoderConfig fields...}}},
     "vocabulary": {"text_vocab": 256, "image_codebook_size": 1000, "specials": [...]},
     "image_tokens": [8, 8],          # the (h, w) token grid it was trained to write
     "video_tokens": [5, 8, 8],       # optional: the (t, h, w) grid of its training clips
     "caption_template": "a photo of a {label}",   # or null
     "extra": {...}}                  # optional, free JSON metadata, not interpreted

Loading reads JSON and safetensors only and rebuilds the model through
:func:`vqtok.registry.build`; the directory is written atomically by
:func:`vqtok.formats.model_dir.save_model_dir`, so a crash leaves the old decoder or the
new one, never half of one.
"""

from __future__ import annotations

import math
import os
import string
from pathlib import Path
from typing import Any

from vqtok import registry
from vqtok.formats import model_dir
from vqtok.formats.hub import resolve_model_dir
from vqtok.formats.jsonfile import json_copy, read_json
from vqtok.formats.model_dir import CONFIG_NAME
from vqtok.formats.schema import (
    Bool,
    Float,
    FormatError,
    Int,
    ListOf,
    Nullable,
    Obj,
    OneOf,
    Spec,
    Str,
    validate,
)
from vqtok.multimodal.attention import ATTENTION_KINDS
from vqtok.multimodal.decoder import MultimodalDecoder
from vqtok.multimodal.positions import SCHEMES
from vqtok.multimodal.streams import REQUIRED_SPECIALS, Vocabulary

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SPEC",
    "DecoderFormatError",
    "build_decoder_config",
    "load_decoder_dir",
    "read_decoder_config",
    "save_decoder_dir",
    "vocabulary_spec",
]

FORMAT = "vqtok.decoder"
FORMAT_VERSION = 1

MAX_IMAGE_TOKENS = 16384
"""The most tokens of one generated grid (e.g. 128 x 128): generation is sequential, and a
file must not be able to ask for a grid that would never finish."""


class _Specials(Spec):
    """The special tokens: the required ones first, in their order (their ids follow from
    their positions), then any extra, all distinct."""

    def check(self, value: object, where: str) -> None:
        required = list(REQUIRED_SPECIALS)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)
                and value[:len(required)] == required and len(set(value)) == len(value)):
            raise self.fail(where, f"a list of distinct strings starting with {required}", value)


class _Template(Spec):
    """A caption template: text with exactly one field, ``{label}``."""

    def check(self, value: object, where: str) -> None:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(value)
                      if f is not None] if isinstance(value, str) else None
        except ValueError:  # an unmatched brace
            fields = None
        if fields != ["label"]:
            raise self.fail(where, "text with exactly one field, {label}", value)


DECODER_CONFIG = Obj({
    "vocab_size": Int(min=1, max=1 << 24), "d_model": Int(min=1, max=16384),
    "n_layers": Int(min=1, max=512), "n_heads": Int(min=1, max=1024),
    "head_dim": Nullable(Int(min=2, max=4096)), "attention": OneOf(*ATTENTION_KINDS),
    "n_kv_heads": Nullable(Int(min=1, max=1024)), "d_latent": Nullable(Int(min=1, max=16384)),
    "d_rope": Nullable(Int(min=2, max=4096)), "mlp_hidden": Nullable(Int(min=1, max=65536)),
    "position_scheme": OneOf(*SCHEMES), "rope_base": Float(above=0),
    "norm_eps": Float(above=0), "tie_embeddings": Bool(), "init_std": Float(above=0),
})
"""Every ``DecoderConfig`` field with its type and a range that caps the model's size."""

SPEC = Obj({
    **model_dir.header_spec(FORMAT, FORMAT_VERSION, "decoder"),
    "decoder": Obj({"class_path": Str(nonempty=True),
                    "init_args": Obj({"config": DECODER_CONFIG})}),
    "vocabulary": Obj({"text_vocab": Int(min=1, max=1 << 20),
                       "image_codebook_size": Int(min=1, max=1 << 24),
                       "specials": _Specials()}),
    "image_tokens": ListOf(Int(min=1, max=MAX_IMAGE_TOKENS), length=2),
    "caption_template": Nullable(_Template()),
}, optional={
    **model_dir.OPTIONAL_SPEC,
    "video_tokens": ListOf(Int(min=1, max=MAX_IMAGE_TOKENS), length=3),
    "extra": Obj({}, optional={
        "labels": ListOf(Str()),
        "tokenizer": Obj({"path": Str(), "sha256": Str(pattern="[0-9a-f]{64}",
                                                        what="a SHA-256 in hex")}),
    }, open=True),
})
"""``config.json`` of a decoder directory. ``extra`` is free metadata, except the two keys
``vqtok generate`` reads: the class ``labels`` and which ``tokenizer`` made the tokens."""


class DecoderFormatError(FormatError):
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
    video_tokens: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` content for ``model``; validated exactly as a loaded one is."""
    if not isinstance(model, MultimodalDecoder):
        raise TypeError(f"expected a MultimodalDecoder, got {type(model).__name__}")
    config = {
        **model_dir.new_header(FORMAT, FORMAT_VERSION),
        "decoder": json_copy(registry.spec_of(model), "decoder init_args"),
        "vocabulary": vocabulary_spec(vocab),
        "image_tokens": [int(s) for s in image_tokens],
        "caption_template": caption_template,
    }
    if video_tokens is not None:
        config["video_tokens"] = [int(s) for s in video_tokens]
    if extra is not None:
        config["extra"] = json_copy(extra, "extra")
    validate(config, SPEC, CONFIG_NAME, DecoderFormatError)
    _check_grid(config, CONFIG_NAME)
    vocab_size = config["decoder"]["init_args"]["config"]["vocab_size"]
    if vocab.size != vocab_size:
        raise ValueError(f"vocabulary of size {vocab.size} does not match the decoder's "
                         f"vocab_size {vocab_size}")
    return config


# ---- save -----------------------------------------------------------------------------


def save_decoder_dir(
    model: MultimodalDecoder,
    vocab: Vocabulary,
    out_dir: str | os.PathLike[str],
    image_tokens: tuple[int, int],
    *,
    caption_template: str | None = None,
    extra: dict[str, Any] | None = None,
    video_tokens: tuple[int, int, int] | None = None,
) -> Path:
    """Write ``model`` and its vocabulary as a decoder directory at ``out_dir``.

    ``image_tokens`` is the ``(h, w)`` grid the decoder writes (what its tokenizer gives for
    the training images); ``caption_template`` how its captions were made from a label;
    ``video_tokens`` the ``(t, h, w)`` grid of the clips of a decoder trained on video.
    An existing decoder at ``out_dir`` is replaced atomically; a directory holding other
    files is refused rather than deleted.
    """
    config = build_decoder_config(model, vocab, image_tokens, caption_template=caption_template,
                                  extra=extra, video_tokens=video_tokens)
    return model_dir.save_model_dir(Path(out_dir), config, model, FORMAT, "decoder")


# ---- load -----------------------------------------------------------------------------


def read_decoder_config(path: Path) -> dict[str, Any]:
    """Parse and validate a decoder's ``config.json``."""
    config = read_json(path, DecoderFormatError)
    validate(config, SPEC, str(path), DecoderFormatError)
    _check_grid(config, path)
    return config


def _check_grid(config: dict[str, Any], path: Path | str) -> None:
    for key in ("image_tokens", "video_tokens"):
        shape = config.get(key)
        if shape is not None and math.prod(shape) > MAX_IMAGE_TOKENS:
            raise DecoderFormatError(
                f"{path}: {key} {' x '.join(map(str, shape))} is {math.prod(shape)} tokens, "
                f"more than the {MAX_IMAGE_TOKENS} a generated grid may have")


def load_decoder_dir(
    path: str | os.PathLike[str], device: str = "cpu", revision: str | None = None
) -> tuple[MultimodalDecoder, Vocabulary, dict[str, Any]]:
    """Rebuild a decoder directory: ``(model in eval mode, vocabulary, config)``.

    ``path``: a local directory, or a Hugging Face Hub repo id ``"org/name"`` at
    ``revision`` (:func:`vqtok.formats.hub.resolve_model_dir`; the ``hub`` extra).
    Raises :class:`DecoderFormatError` (a ValueError) naming the file for a missing
    directory or file, invalid JSON, an unknown format or key, a class that is not a
    :class:`MultimodalDecoder`, a vocabulary that does not match the model, corrupt or
    foreign weights, a model over ``MAX_MODEL_BYTES`` or weights that do not match it
    exactly (both judged before the model is allocated: :func:`model_dir.build_and_load`).
    """
    root = resolve_model_dir(path, "decoder", DecoderFormatError, revision)
    config_path, config = model_dir.read_model_config(root, SPEC, "decoder",
                                                      DecoderFormatError)
    _check_grid(config, config_path)
    try:
        vocab = Vocabulary(**config["vocabulary"])
    except (ValueError, TypeError) as err:
        raise DecoderFormatError(f"{config_path}: cannot build the vocabulary: {err}") from err

    def build() -> MultimodalDecoder:
        model = model_dir.build_module(config["decoder"], "decoder", config_path,
                                       DecoderFormatError)
        if not isinstance(model, MultimodalDecoder):
            raise DecoderFormatError(f"{config_path}: decoder.class_path must name a Multimodal"
                                     f"Decoder, got {config['decoder']['class_path']!r}")
        if vocab.size != model.config.vocab_size:
            raise DecoderFormatError(f"{config_path}: the vocabulary has {vocab.size} ids but "
                                     f"the decoder's vocab_size is {model.config.vocab_size}")
        return model

    model = model_dir.build_and_load(build, root, FORMAT, DecoderFormatError, "decoder",
                                     config.get(model_dir.WEIGHTS_SHA256))
    return model.to(device).eval(), vocab, config
