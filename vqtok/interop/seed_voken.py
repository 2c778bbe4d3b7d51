"""SEED-Voken's image tokenizers (github.com/TencentARC/SEED-Voken) as vqtok models
(docs/interop.md#seed-voken): Open-MAGVIT2 (Luo et al. 2024; LFQ behind the MAGVIT-v2
encoder and decoder) and IBQ (Shi et al. 2024; the VQGAN encoder and decoder of taming
with an index-backpropagation codebook), each a Lightning ``.ckpt`` holding
``{"state_dict": ...}``.

The family and the architecture are read from the state dict's names and shapes: the
widths, the residual blocks per level, the attention levels (IBQ), ``z_channels`` (the LFQ
bits of Open-MAGVIT2), the codebook's size and dim (IBQ). When the checkpoint holds the
exponential moving average of the weights (``model_ema.*``, Lightning's ``LitEma``, its
names the parameters' without dots), those are the weights converted: SEED-Voken's
evaluation runs under its EMA scope. The discriminator and LPIPS weights (``loss.*``)
and the training weights the EMA replaces are ignored and reported. Any other layout is
refused in one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vqtok.interop.common import (
    ConversionError,
    Converted,
    VQGANArch,
    level_count_from,
    load_mapped,
    shape_of,
)
from vqtok.interop.pickles import read_pickle
from vqtok.interop.taming import STYLE
from vqtok.models.autoencoder import VQAutoencoder
from vqtok.models.magvit2 import MagvitDecoder, MagvitEncoder
from vqtok.quantizers.lfq import LFQ

EMA_PREFIX = "model_ema."
IGNORED_PREFIXES = ("loss.", EMA_PREFIX)
# What tells the two families apart (each published layout has these, the other not).
IBQ_MARKERS = ("quantize.embedding.weight", "quant_conv.weight", "encoder.mid.attn_1.q.weight")
MAGVIT_MARKERS = ("encoder.mid_block.0.conv1.weight", "decoder.adaptive.0.gamma.weight")


def load_seed_voken(path: str | os.PathLike[str]) -> Converted:
    """The vqtok model of an Open-MAGVIT2 or IBQ checkpoint from SEED-Voken."""
    path = Path(path)
    ckpt = read_pickle(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConversionError(f"{path}: not a SEED-Voken checkpoint (a Lightning .ckpt with "
                              f"a state_dict)")
    state = ckpt["state_dict"]
    weights, notes = pick_weights(state, path)
    if all(key in weights for key in IBQ_MARKERS):
        model = ibq_arch(weights, path).build()
    elif all(key in weights for key in MAGVIT_MARKERS):
        model = magvit_model(weights, path)
    else:
        raise ConversionError(f"{path}: not a layout SEED-Voken publishes (neither IBQ's "
                              f"{IBQ_MARKERS[0]} nor Open-MAGVIT2's {MAGVIT_MARKERS[1]})")
    model = load_mapped(model, weights, STYLE, path, ignore=lambda key: False)
    losses = sum(1 for key in state if key.startswith("loss."))
    notes += [f"{losses} loss.* tensors (discriminator and LPIPS)"] if losses else []
    notes += [f"checkpoint entry {key!r}" for key in sorted(ckpt) if key != "state_dict"]
    return Converted(model, "seed-voken", os.fspath(path), notes)


def pick_weights(state: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[str]]:
    """The model's weights by their published names: the EMA copies when the checkpoint
    holds them (every one, or one line naming the first missing), else the training
    weights; with the note of what was left out."""
    own = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    ema = {k[len(EMA_PREFIX):]: v for k, v in state.items() if k.startswith(EMA_PREFIX)}
    if not ema:
        return own, []
    picked = {}
    for key in own:
        flat = key.replace(".", "")  # LitEma's buffer name of the parameter
        if flat not in ema:
            raise ConversionError(f"{path}: the checkpoint holds EMA weights (model_ema.*) but "
                                  f"none for {key}")
        picked[key] = ema[flat]
    return picked, [(f"{len(own)} training weights (their EMA copies, model_ema.*, were "
                     f"converted: SEED-Voken evaluates with those)")]


def ibq_arch(state: dict[str, Any], path: Path) -> VQGANArch:
    """The architecture of an IBQ checkpoint (taming's VQGAN layout), from its shapes."""
    levels = level_count_from(state, r"encoder\.down\.(\d+)\.")
    return VQGANArch.from_shapes(
        state, path, r"encoder\.down\.0\.block\.(\d+)\.", widths=_widths(state, levels, path),
        encoder_attention=_attention(state, "encoder.down", levels),
        decoder_attention=_attention(state, "decoder.up", levels), mid_attention=True,
        out_channels=shape_of(state, "decoder.conv_out.weight", path)[0], quantizer="ibq")


def magvit_model(state: dict[str, Any], path: Path) -> VQAutoencoder:
    """The Open-MAGVIT2 model a checkpoint describes: MAGVIT-v2 encoder and decoder, LFQ
    with one bit per latent channel (2^z_channels codes), from its shapes."""
    levels = level_count_from(state, r"encoder\.down\.(\d+)\.")
    channels = shape_of(state, "encoder.conv_in.weight", path)
    widths = _widths(state, levels, path)
    blocks = level_count_from(state, r"encoder\.down\.0\.block\.(\d+)\.")
    z_channels = shape_of(state, "encoder.conv_out.weight", path)[0]
    try:
        encoder = MagvitEncoder(channels[1], channels[0], list(widths), blocks, z_channels)
        decoder = MagvitDecoder(shape_of(state, "decoder.conv_out.weight", path)[0],
                                list(widths), blocks, z_channels)
        quantizer = LFQ(bits=z_channels)
    except ValueError as err:
        raise ConversionError(f"{path}: unsupported architecture: {err}") from err
    return VQAutoencoder(encoder, quantizer, decoder)


def _widths(state: dict[str, Any], levels: int, path: Path) -> tuple[int, ...]:
    if levels == 0:
        raise ConversionError(f"{path}: the source has no encoder levels (encoder.down.*)")
    return tuple(shape_of(state, f"encoder.down.{level}.block.0.conv1.weight", path)[0]
                 for level in range(levels))


def _attention(state: dict[str, Any], prefix: str, levels: int) -> tuple[int, ...]:
    """Levels whose first residual block is followed by self-attention."""
    return tuple(level for level in range(levels) if f"{prefix}.{level}.attn.0.q.weight" in state)

