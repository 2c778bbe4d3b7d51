"""LlamaGen's image tokenizers (Sun et al. 2024, "Autoregressive Model Beats Diffusion",
section 2.1): ``vq_ds8_c2i.pt``, ``vq_ds16_c2i.pt``, ``vq_ds16_t2i.pt``, each
``{"model": state_dict}``, as vqtok models (docs/interop.md#llamagen).

The architecture is VQ-16 (``ch_mult`` [1, 1, 2, 2, 4]) or VQ-8 ([1, 2, 2, 4]): ``ch`` 128,
2 residual blocks, ``z_channels`` 256, self-attention after each residual block of the
lowest-resolution level and in the middle, GroupNorm of 32 groups; a codebook (16,384 x 8
in the published files) behind ``quant_conv``, searched with l2-normalised inputs and codes
(VectorQuantizer's ``cosine``). Which one is read from the number of levels, or given
(``arch``); the widths, the residual blocks per level and the codebook's size are read
from the shapes (any file of this layout converts, the published sizes included). The
usage buffer ``quantize.codebook_used`` is ignored.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from vqtok.interop.common import (
    ConversionError,
    Converted,
    VQGANArch,
    level_count_from,
    load_mapped,
)
from vqtok.interop.pickles import read_pickle
from vqtok.interop.taming import STYLE as TAMING_STYLE

ARCHS = {"VQ-8": (1, 2, 2, 4), "VQ-16": (1, 1, 2, 2, 4)}
"""LlamaGen's two published encoder/decoder layouts, by name: each level's ``ch_mult``."""

STYLE = dataclasses.replace(
    TAMING_STYLE,  # LlamaGen's modules follow taming's; its levels and middle are named anew
    down=lambda level, levels: f"conv_blocks.{level}",
    up=lambda level, levels: f"conv_blocks.{levels - 1 - level}",
    block="res", mid={"block_1": "mid.0", "attn_1": "mid.1", "block_2": "mid.2"},
)
"""LlamaGen's key names (``tokenizer/tokenizer_image/vq_model.py``)."""

IGNORED = ("quantize.codebook_used",)


def parse_arch(name: str) -> str:
    """``"VQ-8"`` or ``"VQ-16"`` from the spellings people use (``vq8``, ``VQ_16``)."""
    key = name.upper().replace("_", "-")
    key = key if key.startswith("VQ-") else key.replace("VQ", "VQ-", 1)
    if key not in ARCHS:
        raise ConversionError(f"--arch {name!r}: LlamaGen's architectures are {sorted(ARCHS)}")
    return key


def load_llamagen(path: str | os.PathLike[str], arch: str | None = None) -> Converted:
    """The vqtok model of a LlamaGen tokenizer file; ``arch`` ("VQ-8", "VQ-16") overrides
    the one read from the weights' shapes."""
    path = Path(path)
    ckpt = read_pickle(path)
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: not a LlamaGen tokenizer file ({{'model': state_dict}})")
    if arch is None:
        levels = level_count_from(state, r"encoder\.conv_blocks\.(\d+)\.")
        found = [name for name, mult in ARCHS.items() if len(mult) == levels]
        if not found:
            raise ConversionError(f"{path}: the encoder has {levels} levels; LlamaGen's "
                                  f"VQ-8 has 4 and VQ-16 has 5 (give --arch to say which)")
        arch = found[0]
    mult = ARCHS[parse_arch(arch)]
    # ch (128), z_channels (256) and the residual blocks per level (2) are LlamaGen's
    # defaults; read from the shapes so that any file of this layout converts.
    model_arch = VQGANArch.from_shapes(
        state, path, r"encoder\.conv_blocks\.0\.res\.(\d+)\.", widths=(),
        encoder_attention=(len(mult) - 1,), decoder_attention=(len(mult) - 1,),
        mid_attention=True, cosine=True)
    model_arch = dataclasses.replace(model_arch,
                                     widths=tuple(model_arch.channels * m for m in mult))
    model = load_mapped(model_arch.build(), state, STYLE, path, ignore=IGNORED.__contains__)
    notes = [f"{key} (a training-time usage buffer)" for key in IGNORED if key in state]
    notes += [f"file entry {key!r}" for key in sorted(ckpt) if key != "model"]
    return Converted(model, "llamagen", os.fspath(path), notes)

