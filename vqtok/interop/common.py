"""What every conversion shares (docs/interop.md): the VQGAN architecture a source
describes, its model, the key map from a source's state dict to ours, the one strict load,
and the atomic write of the result as an ordinary tokenizer directory.

A source's tensors are matched name by name and shape by shape before anything is copied:
the first key the architecture needs and the source lacks, or the first key the source
holds and the architecture has not (beside the ones a source is known to carry and we
ignore, such as the discriminator's), is one :class:`ConversionError` line naming the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from vqtok.formats.outputs import check_new_output
from vqtok.formats.schema import FormatError
from vqtok.formats.tokenizer_dir import DEFAULT_NORMALIZATION, save_tokenizer_dir
from vqtok.models.autoencoder import VQAutoencoder
from vqtok.models.vqgan import VQGANDecoder, VQGANEncoder
from vqtok.quantizers.ibq import IBQ
from vqtok.quantizers.vq import VectorQuantizer

SOURCE_NORMALIZATION = dict(DEFAULT_NORMALIZATION)
"""taming, diffusers and LlamaGen all train on pixels mapped to [-1, 1]: mean = std = 0.5."""


class ConversionError(FormatError):
    """A source that cannot be converted; the message is one line naming the file."""


@dataclass(frozen=True)
class VQGANArch:
    """A VQGAN as a source describes it (:mod:`vqtok.models.vqgan`)."""

    channels: int
    """Width of the encoder's first convolution."""
    widths: tuple[int, ...]
    """Encoder width of each level, highest resolution first."""
    num_res_blocks: int
    encoder_attention: tuple[int, ...]
    """Encoder levels with self-attention after each residual block."""
    decoder_attention: tuple[int, ...]
    mid_attention: bool
    z_channels: int
    dim: int
    """The codebook's dim (``quant_conv``'s output)."""
    codebook_size: int
    decoder_widths: tuple[int, ...] | None = None
    """Decoder widths when they differ from the encoder's (LlamaGen allows it)."""
    in_channels: int = 3
    out_channels: int = 3
    num_groups: int = 32
    cosine: bool = False
    """l2-normalise inputs and codes before the search (LlamaGen)."""
    quantizer: str = "vq"
    """``"vq"``: the nearest code (:class:`VectorQuantizer`); ``"ibq"``: the largest logit
    (:class:`IBQ`, SEED-Voken's IBQ tokenizers)."""

    def build(self) -> VQAutoencoder:
        """The model, its quantizer marked initialised (a loaded codebook is never
        re-initialised from data when training resumes)."""
        shared = {"num_res_blocks": self.num_res_blocks, "mid_attention": self.mid_attention,
                  "z_channels": self.z_channels, "dim": self.dim,
                  "num_groups": self.num_groups, "eps": 1e-6}
        try:
            encoder = VQGANEncoder(self.in_channels, self.channels, list(self.widths),
                                   attention_levels=list(self.encoder_attention), **shared)
            decoder = VQGANDecoder(self.out_channels, list(self.decoder_widths or self.widths),
                                   attention_levels=list(self.decoder_attention), **shared)
            if self.quantizer == "ibq":
                return VQAutoencoder(encoder, IBQ(self.codebook_size, self.dim), decoder)
            quantizer = VectorQuantizer(self.codebook_size, self.dim, init="normal",
                                        cosine=self.cosine)
        except ValueError as err:
            raise ConversionError(f"unsupported architecture: {err}") from err
        quantizer.initialized.fill_(True)
        return VQAutoencoder(encoder, quantizer, decoder)

    @classmethod
    def from_shapes(cls, state: Mapping[str, Any], path: str | os.PathLike[str], blocks: str,
                    **given: Any) -> VQGANArch:
        """The architecture a taming-layout state dict's shapes give: ``channels`` and
        ``in_channels`` from ``encoder.conv_in``, ``z_channels`` from ``encoder.conv_out``,
        the codebook's size and dim from ``quantize.embedding``, and ``num_res_blocks``
        counted by the regex ``blocks`` (one group: a block index of the first level);
        ``given`` holds the other fields."""
        conv_in = shape_of(state, "encoder.conv_in.weight", path)
        codebook = shape_of(state, "quantize.embedding.weight", path, dims=2)
        return cls(channels=conv_in[0], in_channels=conv_in[1],
                   num_res_blocks=level_count_from(state, blocks),
                   z_channels=shape_of(state, "encoder.conv_out.weight", path)[0],
                   codebook_size=codebook[0], dim=codebook[1], **given)


@dataclass
class Converted:
    """A converted model and what the conversion left out."""

    model: VQAutoencoder
    source: str
    """``"diffusers"``, ``"taming"``, ``"llamagen"`` or ``"seed-voken"``."""
    path: str
    """What was read (a folder, a file, a Hub repo id)."""
    ignored: list[str] = field(default_factory=list)
    """Notes on what the source holds and the tokenizer does not (discriminator, LPIPS,
    optimizer states, ...), one per kind."""

    def extra(self) -> dict[str, Any]:
        """The ``extra`` metadata of the tokenizer directory."""
        return {"converted_from": {"source": self.source, "path": self.path,
                                   "ignored": list(self.ignored)}}


# ---- the key map ---------------------------------------------------------------------


@dataclass(frozen=True)
class KeyStyle:
    """How a source names the parts of :mod:`vqtok.models.vqgan` (facts read from each
    source's published layout, docs/interop.md#key-names)."""

    down: Callable[[int, int], str]
    """``(level, levels)`` -> the encoder level's prefix."""
    up: Callable[[int, int], str]
    block: str
    attn: str
    downsample: str
    upsample: str
    mid: Mapping[str, str]
    """``block_1``, ``attn_1``, ``block_2`` -> the source's names, with the stage prefix."""
    norm_out: str
    resblock: Mapping[str, str]
    """Our residual block's parameter names (``skip``) -> the source's."""
    attention: Mapping[str, tuple[str, ...]]
    """``norm``, ``qkv``, ``proj`` -> the source's (``qkv``: three, concatenated)."""
    codebook: str = "quantize.embedding.weight"
    quant_conv: str = "quant_conv"
    post_quant_conv: str = "post_quant_conv"


def source_keys(ours: str, style: KeyStyle, levels: int) -> tuple[str, ...]:
    """The source's key(s) of our state-dict key ``ours`` (several for a fused qkv)."""
    if ours == "quantizer.codebook":
        return (style.codebook,)
    part, _, rest = ours.partition(".")
    if rest.startswith(("quant_conv.", "post_quant_conv.")):
        head, _, leaf = rest.partition(".")
        return (f"{getattr(style, head)}.{leaf}",)
    match = re.fullmatch(r"(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(.+)", rest)
    if match:
        kind, level, sub, index, tail = match.groups()
        where = (style.down if kind == "down" else style.up)(int(level), levels)
        name = style.block if sub == "block" else style.attn
        return _leaf(f"{part}.{where}.{name}.{index}", sub == "attn", tail, style)
    match = re.fullmatch(r"(down|up)\.(\d+)\.(downsample|upsample)\.(.+)", rest)
    if match:
        kind, level, which, tail = match.groups()
        where = (style.down if kind == "down" else style.up)(int(level), levels)
        return (f"{part}.{where}.{getattr(style, which)}.{tail}",)
    match = re.fullmatch(r"mid\.(block_1|attn_1|block_2)\.(.+)", rest)
    if match:
        stage, tail = match.groups()
        return _leaf(f"{part}.{style.mid[stage]}", stage == "attn_1", tail, style)
    if rest.startswith("norm_out."):
        return (f"{part}.{style.norm_out}.{rest.partition('.')[2]}",)
    return (ours,)  # conv_in, conv_out: the same names everywhere


def _leaf(prefix: str, attention: bool, tail: str, style: KeyStyle) -> tuple[str, ...]:
    layer, _, param = tail.partition(".")
    if attention:
        return tuple(f"{prefix}.{name}.{param}" for name in style.attention[layer])
    return (f"{prefix}.{style.resblock.get(layer, layer)}.{param}",)


# ---- loading -------------------------------------------------------------------------


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file, as float32 on the CPU; a file that is not one
    (truncated, say) is one :class:`ConversionError` line."""
    if not path.is_file():
        raise ConversionError(f"{path}: missing file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ConversionError(f"{path}: not a readable safetensors file "
                              f"({' '.join(str(err).split())})") from err


def load_mapped(model: VQAutoencoder, tensors: Mapping[str, Any], style: KeyStyle,
                path: str | os.PathLike[str], ignore: Callable[[str], bool]) -> VQAutoencoder:
    """Copy a source state dict into ``model`` through ``style``'s names, after checking
    that the source holds every tensor the model needs with its shape, and nothing else
    but keys ``ignore`` accepts. Buffers of ours that no source has (the quantizer's usage
    and initialised flag) keep their values."""
    levels = len(model.encoder.widths)
    state = model.state_dict()
    wanted: dict[str, tuple[str, ...]] = {
        ours: source_keys(ours, style, levels) for ours in state
        if not ours.startswith("quantizer.") or ours == "quantizer.codebook"}
    needed = {key for keys in wanted.values() for key in keys}
    for ours, keys in wanted.items():
        for key in keys:
            if key not in tensors:
                raise ConversionError(f"{path}: the source has no tensor {key} (needed for "
                                      f"{ours} of the declared architecture)")
    unexpected = sorted(k for k in tensors if k not in needed and not ignore(k))
    if unexpected:
        raise ConversionError(f"{path}: the source holds {len(unexpected)} tensors the declared "
                              f"architecture has not, such as {unexpected[0]}")
    converted: dict[str, Tensor] = {}
    for ours, keys in wanted.items():
        target = tuple(state[ours].shape)
        part = (target[0] // len(keys), *target[1:])
        pieces = []
        for key in keys:
            value = tensors[key]
            if not isinstance(value, Tensor):
                raise ConversionError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
            if tuple(value.shape) not in (part, _squeeze_kernel(part)):
                raise ConversionError(f"{path}: {key} is {list(value.shape)} but the declared "
                                      f"architecture needs {list(part)} (size mismatch)")
            pieces.append(value.detach().to(torch.float32).reshape(part))
        converted[ours] = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    for ours in state.keys() - converted.keys():
        converted[ours] = state[ours]
    model.load_state_dict(converted, strict=True)
    return model.eval()


def _squeeze_kernel(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A 1x1 convolution's weight as a linear layer stores it (diffusers' attention)."""
    return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape


def attention_levels(resolution: int, levels: int, resolutions: Any, where: str) -> tuple[int, ...]:
    """Levels whose side ``resolution / 2^level`` is listed in ``resolutions`` (taming's
    ``attn_resolutions``)."""
    if not isinstance(resolutions, (list, tuple)) or any(
            not isinstance(r, int) for r in resolutions):
        raise ConversionError(f"{where}: attn_resolutions must be a list of ints, got "
                              f"{resolutions!r}")
    return tuple(i for i in range(levels) if resolution // 2**i in set(resolutions))


def check_int(value: Any, key: str, where: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else one line naming the key."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConversionError(f"{where}: {key} must be an int >= {minimum}, got {value!r}")
    return value


def check_ints(value: Any, key: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConversionError(f"{where}: {key} must be a non-empty list of ints, got {value!r}")
    return tuple(check_int(v, key, where) for v in value)


def shape_of(state: Mapping[str, Any], key: str, path: str | os.PathLike[str],
             dims: int = 1) -> tuple[int, ...]:
    """The shape of tensor ``key`` of a source state dict, which must have at least
    ``dims`` dimensions, else one line naming the key."""
    value = state.get(key)
    if not isinstance(value, Tensor) or value.ndim < dims:
        raise ConversionError(f"{path}: the source has no tensor {key}")
    return tuple(value.shape)


def level_count_from(keys: Any, pattern: str) -> int:
    """1 + the largest level index that ``pattern`` (one group) finds in ``keys``."""
    found = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    return 1 + max(found) if found else 0


# ---- writing -------------------------------------------------------------------------


def write_converted(converted: Converted, out: str | os.PathLike[str], *,
                    inputs: list[Path], overwrite: bool = False) -> Path:
    """Write ``converted`` as a tokenizer directory (docs/formats.md#tokenizer),
    atomically, normalisation [-1, 1] recorded; ``out`` is checked first like every
    command's output (:func:`vqtok.formats.outputs.check_new_output`)."""
    check_new_output(out, inputs=inputs, overwrite=overwrite, folder=True)
    # normalization None records DEFAULT_NORMALIZATION, the sources' [-1, 1]
    return save_tokenizer_dir(converted.model, out, normalization=None,
                              extra=converted.extra())
