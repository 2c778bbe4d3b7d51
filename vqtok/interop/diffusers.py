"""diffusers' ``VQModel`` folders (``config.json`` + ``diffusion_pytorch_model.safetensors``),
local or on the Hugging Face Hub, as vqtok models (docs/interop.md#diffusers).

Read as JSON and safetensors only; diffusers itself is never imported. Covered: every
``VQModel`` config whose blocks are ``DownEncoderBlock2D`` / ``AttnDownEncoderBlock2D`` and
``UpDecoderBlock2D`` / ``AttnUpDecoderBlock2D`` with ``norm_type: "group"`` and
``act_fn: "silu"`` (LDM VQ-f4/f8, aMUSEd's VQGAN, VQ-Diffusion). Refused: MoVQ's
spatially-conditioned norm (``norm_type: "spatial"``, Kandinsky), other activations,
``.bin`` weights (a pickle), and any other model class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vqtok.formats.hub import resolve_model_dir
from vqtok.formats.jsonfile import read_json
from vqtok.interop.common import (
    ConversionError,
    Converted,
    KeyStyle,
    VQGANArch,
    check_int,
    check_ints,
    load_mapped,
    read_safetensors,
)

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_FILES = (CONFIG, WEIGHTS)

_DOWN = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
_UP = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}
_READ = {"in_channels", "out_channels", "down_block_types", "up_block_types",
         "block_out_channels", "layers_per_block", "act_fn", "latent_channels",
         "num_vq_embeddings", "norm_num_groups", "vq_embed_dim", "norm_type",
         "mid_block_add_attention"}
_IGNORED = {"sample_size", "scaling_factor", "lookup_from_codebook", "force_upcast"}
"""Config keys that do not change what the model computes from pixels to ids to pixels
(``scaling_factor`` scales latents for a diffusion model, not for the tokenizer)."""

STYLE = KeyStyle(
    down=lambda level, levels: f"down_blocks.{level}",
    up=lambda level, levels: f"up_blocks.{levels - 1 - level}",
    block="resnets", attn="attentions",
    downsample="downsamplers.0", upsample="upsamplers.0",
    mid={"block_1": "mid_block.resnets.0", "attn_1": "mid_block.attentions.0",
         "block_2": "mid_block.resnets.1"},
    norm_out="conv_norm_out",
    resblock={"skip": "conv_shortcut"},
    attention={"norm": ("group_norm",), "qkv": ("to_q", "to_k", "to_v"),
               "proj": ("to_out.0",)},
)
"""diffusers' key names (``models/autoencoders/vae.py``, ``vq_model.py``)."""


def is_diffusers_dir(root: Path) -> bool:
    """Whether ``root`` holds a diffusers model's ``config.json`` (it names its class in
    ``_class_name``) rather than a vqtok tokenizer's."""
    try:
        config = read_json(root / CONFIG, ConversionError)
    except (ConversionError, OSError):
        return False
    return isinstance(config, dict) and "_class_name" in config and "format" not in config


def load_diffusers(source: str | os.PathLike[str], *, subfolder: str | None = None,
                   revision: str | None = None) -> Converted:
    """The vqtok model of a ``VQModel`` folder or Hub repo id (its ``subfolder``, at
    ``revision``). Every problem is one :class:`ConversionError` line naming the file."""
    root = resolve_model_dir(source, "diffusers VQModel", ConversionError, revision,
                             subfolder=subfolder, files=DIFFUSERS_FILES)
    config_path = root / CONFIG
    config = read_json(config_path, ConversionError)
    arch, notes = arch_from_config(config, config_path)
    weights_path = root / WEIGHTS
    if not weights_path.is_file() and (root / "diffusion_pytorch_model.bin").is_file():
        raise ConversionError(f"{root}: only diffusion_pytorch_model.bin (a pickle) is here; "
                              f"save the model with safe_serialization=True")
    tensors = read_safetensors(weights_path)
    model = load_mapped(arch.build(), tensors, STYLE, weights_path, ignore=lambda key: False)
    return Converted(model, "diffusers", os.fspath(source) + (f" ({subfolder})" if subfolder
                                                              else ""), notes)


def arch_from_config(config: Any, where: Path) -> tuple[VQGANArch, list[str]]:
    """The architecture a ``VQModel`` config describes, and notes on the keys ignored."""
    if not isinstance(config, dict):
        raise ConversionError(f"{where}: not a diffusers config (a JSON object)")
    name = config.get("_class_name")
    if name != "VQModel":
        raise ConversionError(f"{where}: not a diffusers VQModel (_class_name is {name!r}); "
                              f"only VQModel folders convert")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in _READ | _IGNORED)
    if unknown:
        raise ConversionError(f"{where}: unknown VQModel config key {unknown[0]!r}")
    get = config.get
    if get("norm_type", "group") != "group":
        raise ConversionError(f"{where}: norm_type {get('norm_type')!r} (MoVQ's spatially "
                              f"conditioned norm) is not supported; only 'group' is")
    if get("act_fn", "silu") != "silu":
        raise ConversionError(f"{where}: act_fn {get('act_fn')!r} is not supported; only 'silu'")
    widths = check_ints(get("block_out_channels", [64]), "block_out_channels", str(where))
    down = get("down_block_types", ["DownEncoderBlock2D"])
    up = get("up_block_types", ["UpDecoderBlock2D"])
    for key, kinds, value in (("down_block_types", _DOWN, down), ("up_block_types", _UP, up)):
        if not isinstance(value, list) or len(value) != len(widths):
            raise ConversionError(f"{where}: {key} must list one block per block_out_channels "
                                  f"entry ({len(widths)}), got {value!r}")
        bad = [v for v in value if v not in kinds]
        if bad:
            raise ConversionError(f"{where}: {key} holds {bad[0]!r}; supported: {sorted(kinds)}")
    latent = check_int(get("latent_channels", 3), "latent_channels", str(where))
    dim = get("vq_embed_dim")
    arch = VQGANArch(
        channels=widths[0], widths=widths,
        num_res_blocks=check_int(get("layers_per_block", 1), "layers_per_block", str(where)),
        encoder_attention=tuple(i for i, kind in enumerate(down) if _DOWN[kind]),
        # up_block_types run from the lowest resolution: entry i is level n - 1 - i
        decoder_attention=tuple(len(up) - 1 - i for i, kind in enumerate(up) if _UP[kind]),
        mid_attention=bool(get("mid_block_add_attention", True)),
        z_channels=latent,
        dim=latent if dim is None else check_int(dim, "vq_embed_dim", str(where)),
        codebook_size=check_int(get("num_vq_embeddings", 256), "num_vq_embeddings", str(where)),
        in_channels=check_int(get("in_channels", 3), "in_channels", str(where)),
        out_channels=check_int(get("out_channels", 3), "out_channels", str(where)),
        num_groups=check_int(get("norm_num_groups", 32), "norm_num_groups", str(where)))
    notes = [f"{key}={config[key]!r} (not used from pixels to ids to pixels)"
             for key in sorted(_IGNORED & config.keys())]
    return arch, notes
