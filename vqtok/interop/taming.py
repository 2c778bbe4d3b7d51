"""taming-transformers VQGAN log folders (``configs/model.yaml`` + ``ckpts/last.ckpt``) as
vqtok models (docs/interop.md#taming).

The YAML is read with ``yaml.safe_load`` (no tags, no objects); the Lightning checkpoint
through :func:`vqtok.interop.pickles.read_pickle`. Covered: ``taming.models.vqgan.VQModel``
(the ImageNet f16-1024 and f16-16384 models, and every ``ddconfig`` of that class). The
discriminator and LPIPS weights (``loss.*``), optimizer states, counters and callback
states are ignored and reported. Refused: other model classes (Gumbel, EMA and
conditional VQGANs), ``double_z``, ``remap``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from vqtok.interop.common import (
    ConversionError,
    Converted,
    KeyStyle,
    VQGANArch,
    attention_levels,
    check_int,
    check_ints,
    load_mapped,
)
from vqtok.interop.pickles import read_pickle

CONFIG = Path("configs") / "model.yaml"
CHECKPOINT = Path("ckpts") / "last.ckpt"
MODEL_CLASS = "taming.models.vqgan.VQModel"

STYLE = KeyStyle(
    down=lambda level, levels: f"down.{level}",
    up=lambda level, levels: f"up.{level}",
    block="block", attn="attn", downsample="downsample", upsample="upsample",
    mid={"block_1": "mid.block_1", "attn_1": "mid.attn_1", "block_2": "mid.block_2"},
    norm_out="norm_out",
    resblock={"skip": "nin_shortcut"},
    attention={"norm": ("norm",), "qkv": ("q", "k", "v"), "proj": ("proj_out",)},
)
"""taming's key names (``taming/modules/diffusionmodules/model.py``)."""

_DDCONFIG = {"double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult",
             "num_res_blocks", "attn_resolutions", "dropout"}
_PARAMS = {"embed_dim", "n_embed", "ddconfig", "lossconfig", "ckpt_path", "ignore_keys",
           "image_key", "colorize_nlabels", "monitor", "remap", "sane_index_shape"}


def load_taming(logdir: str | os.PathLike[str], checkpoint: str | None = None) -> Converted:
    """The vqtok model of a taming log folder: ``configs/model.yaml`` and
    ``ckpts/last.ckpt`` (or ``checkpoint``, a path inside or outside it)."""
    root = Path(logdir)
    if not root.is_dir():
        raise ConversionError(f"{root}: not a taming log folder (no such folder)")
    config_path = root / CONFIG
    arch = arch_from_yaml(_read_yaml(config_path), config_path)
    ckpt_path = root / CHECKPOINT if checkpoint is None else Path(checkpoint)
    ckpt = read_pickle(ckpt_path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConversionError(f"{ckpt_path}: not a Lightning checkpoint (no state_dict)")
    state = ckpt["state_dict"]
    model = load_mapped(arch.build(), state, STYLE, ckpt_path,
                        ignore=lambda key: key.startswith("loss."))
    losses = sum(1 for key in state if key.startswith("loss."))
    notes = [f"{losses} loss.* tensors (discriminator and LPIPS)"] if losses else []
    notes += [f"checkpoint entry {key!r}" for key in sorted(ckpt) if key != "state_dict"]
    return Converted(model, "taming", os.fspath(root), notes)


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConversionError(f"{path}: missing (a taming log folder holds configs/model.yaml)")
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: not readable YAML ({' '.join(str(err).split())})") \
            from err


def arch_from_yaml(config: Any, where: Path) -> VQGANArch:
    """The architecture of a taming ``model.yaml``."""
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("params"), dict):
        raise ConversionError(f"{where}: no model.params section")
    if model.get("target") != MODEL_CLASS:
        raise ConversionError(f"{where}: model.target is {model.get('target')!r}; only "
                              f"{MODEL_CLASS} converts")
    params = model["params"]
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise ConversionError(f"{where}: unknown model.params key {unknown[0]!r}")
    if params.get("remap") is not None:
        raise ConversionError(f"{where}: model.params.remap (a remapped codebook) is not "
                              f"supported")
    dd = params.get("ddconfig")
    if not isinstance(dd, dict):
        raise ConversionError(f"{where}: model.params.ddconfig must be a mapping")
    unknown = sorted(set(dd) - _DDCONFIG)
    if unknown:
        raise ConversionError(f"{where}: unknown ddconfig key {unknown[0]!r}")
    if dd.get("double_z", True):
        raise ConversionError(f"{where}: ddconfig.double_z must be false for a VQGAN")
    text = str(where)
    ch = check_int(dd.get("ch"), "ddconfig.ch", text)
    mult = check_ints(dd.get("ch_mult"), "ddconfig.ch_mult", text)
    levels = attention_levels(check_int(dd.get("resolution"), "ddconfig.resolution", text),
                              len(mult), dd.get("attn_resolutions"), text)
    return VQGANArch(
        channels=ch, widths=tuple(ch * m for m in mult),
        num_res_blocks=check_int(dd.get("num_res_blocks"), "ddconfig.num_res_blocks", text),
        encoder_attention=levels, decoder_attention=levels, mid_attention=True,
        z_channels=check_int(dd.get("z_channels"), "ddconfig.z_channels", text),
        dim=check_int(params.get("embed_dim"), "model.params.embed_dim", text),
        codebook_size=check_int(params.get("n_embed"), "model.params.n_embed", text),
        in_channels=check_int(dd.get("in_channels", 3), "ddconfig.in_channels", text),
        out_channels=check_int(dd.get("out_ch", 3), "ddconfig.out_ch", text))
