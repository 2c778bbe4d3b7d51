"""The on-disk format of a trained language model: a directory, never a pickle
(docs/formats.md#language-model).

::

    lm/
      config.json        what to build and how its vocabulary is laid out
      model.safetensors  the MultimodalLM state_dict (safetensors, no code inside)

``config.json`` holds exactly these keys (:data:`SPEC`)::

    {"format": "vqtok.decoder", "format_version": 1, "vqtok_version": "0.1.0",
     "decoder": {"class_path": "vqtok.lm.model.MultimodalLM",
                 "init_args": {"config": {...LMConfig fields...}}},
     "vocabulary": {"text_vocab": 256, "image_codebook_size": 1000, "specials": [...]},
     "image_tokens": [8, 8],          # the (h, w) token grid it was trained to write
     "video_tokens": [5, 8, 8],       # optional: the (t, h, w) grid of its training clips
     "caption_template": "a photo of a {label}",   # or null
     "extra": {...}}                  # optional, free JSON metadata, not interpreted

The format tag ``"vqtok.decoder"`` and the ``"decoder"`` key keep the names they were
first written with, so every directory written so far loads; so does the class path
those directories name, ``vqtok.multimodal.decoder.MultimodalDecoder``
(:data:`LEGACY_CLASS_PATHS`).

Loading reads JSON and safetensors only and rebuilds the model through
:func:`vqtok.registry.build`; the directory is written atomically by
:func:`vqtok.formats.model_dir.save_model_dir`, so a crash leaves the old model or the
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
from vqtok.formats.jsonfile import json_copy
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
from vqtok.lm.attention import ATTENTION_KINDS
from vqtok.lm.model import MultimodalLM
from vqtok.lm.positions import SCHEMES
from vqtok.lm.streams import REQUIRED_SPECIALS, Vocabulary

FORMAT = "vqtok.decoder"
FORMAT_VERSION = 1

WHAT = "language model"
"""How error messages name the directory and its model."""

LEGACY_CLASS_PATHS = {
    "vqtok.multimodal.decoder.MultimodalDecoder": "vqtok.lm.model.MultimodalLM",
    "vqtok.multimodal.MultimodalDecoder": "vqtok.lm.model.MultimodalLM",
}
"""Class paths of directories written before the model was named ``MultimodalLM``."""

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


LM_CONFIG = Obj({
    "vocab_size": Int(min=1, max=1 << 24), "d_model": Int(min=1, max=16384),
    "n_layers": Int(min=1, max=512), "n_heads": Int(min=1, max=1024),
    "head_dim": Nullable(Int(min=2, max=4096)), "attention": OneOf(*ATTENTION_KINDS),
    "n_kv_heads": Nullable(Int(min=1, max=1024)), "d_latent": Nullable(Int(min=1, max=16384)),
    "d_rope": Nullable(Int(min=2, max=4096)), "mlp_hidden": Nullable(Int(min=1, max=65536)),
    "position_scheme": OneOf(*SCHEMES), "rope_base": Float(above=0),
    "norm_eps": Float(above=0), "tie_embeddings": Bool(), "init_std": Float(above=0),
})
"""Every ``LMConfig`` field with its type and a range that caps the model's size."""

SPEC = Obj({
    **model_dir.header_spec(FORMAT, FORMAT_VERSION, WHAT),
    "decoder": Obj({"class_path": Str(nonempty=True),
                    "init_args": Obj({"config": LM_CONFIG})}),
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
"""``config.json`` of an LM directory. ``extra`` is free metadata, except the two keys
``vqtok generate`` reads: the class ``labels`` and which ``tokenizer`` made the tokens."""


class LMFormatError(FormatError):
    """An LM directory that cannot be loaded; the message names the file and why."""


def vocabulary_spec(vocab: Vocabulary) -> dict[str, Any]:
    """The JSON description of ``vocab`` (inverse: ``Vocabulary(**spec)``)."""
    return {"text_vocab": vocab.text_vocab, "image_codebook_size": vocab.image_codebook_size,
            "specials": list(vocab.specials)}


def build_lm_config(
    model: MultimodalLM,
    vocab: Vocabulary,
    image_tokens: tuple[int, int],
    *,
    caption_template: str | None = None,
    extra: dict[str, Any] | None = None,
    video_tokens: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` content for ``model``; validated exactly as a loaded one is."""
    if not isinstance(model, MultimodalLM):
        raise TypeError(f"expected a MultimodalLM, got {type(model).__name__}")
    config = {
        **model_dir.new_header(FORMAT, FORMAT_VERSION),
        "decoder": json_copy(registry.spec_of(model), "model init_args"),
        "vocabulary": vocabulary_spec(vocab),
        "image_tokens": [int(s) for s in image_tokens],
        "caption_template": caption_template,
    }
    if video_tokens is not None:
        config["video_tokens"] = [int(s) for s in video_tokens]
    if extra is not None:
        config["extra"] = json_copy(extra, "extra")
    validate(config, SPEC, CONFIG_NAME, LMFormatError)
    _check_grid(config, CONFIG_NAME)
    vocab_size = config["decoder"]["init_args"]["config"]["vocab_size"]
    if vocab.size != vocab_size:
        raise ValueError(f"vocabulary of size {vocab.size} does not match the model's "
                         f"vocab_size {vocab_size}")
    return config


# ---- save -----------------------------------------------------------------------------


def save_lm_dir(
    model: MultimodalLM,
    vocab: Vocabulary,
    out_dir: str | os.PathLike[str],
    image_tokens: tuple[int, int],
    *,
    caption_template: str | None = None,
    extra: dict[str, Any] | None = None,
    video_tokens: tuple[int, int, int] | None = None,
) -> Path:
    """Write ``model`` and its vocabulary as an LM directory at ``out_dir``.

    ``image_tokens`` is the ``(h, w)`` grid the model writes (what its tokenizer gives for
    the training images); ``caption_template`` how its captions were made from a label;
    ``video_tokens`` the ``(t, h, w)`` grid of the clips of a model trained on video.
    An existing LM directory at ``out_dir`` is replaced atomically; a directory holding other
    files is refused rather than deleted.
    """
    config = build_lm_config(model, vocab, image_tokens, caption_template=caption_template,
                                  extra=extra, video_tokens=video_tokens)
    return model_dir.save_model_dir(Path(out_dir), config, model, FORMAT, WHAT)


# ---- load -----------------------------------------------------------------------------


def _check_grid(config: dict[str, Any], path: Path | str) -> None:
    for key in ("image_tokens", "video_tokens"):
        shape = config.get(key)
        if shape is not None and math.prod(shape) > MAX_IMAGE_TOKENS:
            raise LMFormatError(
                f"{path}: {key} {' x '.join(map(str, shape))} is {math.prod(shape)} tokens, "
                f"more than the {MAX_IMAGE_TOKENS} a generated grid may have")


def load_lm_dir(
    path: str | os.PathLike[str], device: str = "cpu", revision: str | None = None
) -> tuple[MultimodalLM, Vocabulary, dict[str, Any]]:
    """Rebuild an LM directory: ``(model in eval mode, vocabulary, config)``.

    ``path``: a local directory, or a Hugging Face Hub repo id ``"org/name"`` at
    ``revision`` (:func:`vqtok.formats.hub.resolve_model_dir`; the ``hub`` extra).
    Raises :class:`LMFormatError` (a ValueError) naming the file for a missing
    directory or file, invalid JSON, an unknown format or key, a class that is not a
    :class:`MultimodalLM`, a vocabulary that does not match the model, corrupt or
    foreign weights, a model over ``MAX_MODEL_BYTES`` or weights that do not match it
    exactly (both judged before the model is allocated: :func:`model_dir.build_and_load`).
    """
    root = resolve_model_dir(path, WHAT, LMFormatError, revision)
    config_path, config = model_dir.read_model_config(root, SPEC, WHAT, LMFormatError)
    _check_grid(config, config_path)
    try:
        vocab = Vocabulary(**config["vocabulary"])
    except (ValueError, TypeError) as err:
        raise LMFormatError(f"{config_path}: cannot build the vocabulary: {err}") from err

    def build() -> MultimodalLM:
        spec = dict(config["decoder"])
        spec["class_path"] = LEGACY_CLASS_PATHS.get(spec["class_path"], spec["class_path"])
        model = model_dir.build_module(spec, WHAT, config_path, LMFormatError)
        if not isinstance(model, MultimodalLM):
            raise LMFormatError(f"{config_path}: decoder.class_path must name a Multimodal"
                                f"LM, got {config['decoder']['class_path']!r}")
        if vocab.size != model.config.vocab_size:
            raise LMFormatError(f"{config_path}: the vocabulary has {vocab.size} ids but "
                                f"the model's vocab_size is {model.config.vocab_size}")
        return model

    model = model_dir.build_and_load(build, root, FORMAT, LMFormatError, WHAT,
                                     config.get(model_dir.WEIGHTS_SHA256))
    return model.to(device).eval(), vocab, config
