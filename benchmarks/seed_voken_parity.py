"""One-off parity of ``vqtok convert --from seed-voken`` against SEED-Voken's own model code
(docs/interop.md#seed-voken). Prints the lines recorded in
``benchmarks/RESULTS_seed_voken_parity.md``; not part of the test suite.

Protocol. ``SOURCE`` is a scratch folder outside this repository holding four files of a
checkout of github.com/TencentARC/SEED-Voken, copied under these names:
``magvit2_model.py`` (``src/Open_MAGVIT2/modules/diffusionmodules/improved_model.py``),
``lfq.py`` (``src/Open_MAGVIT2/modules/vqvae/lookup_free_quantize.py``), ``ibq_model.py``
(``src/IBQ/modules/diffusionmodules/model.py``), ``ibq_quantize.py``
(``src/IBQ/modules/vqvae/quantize.py``) and ``ema.py`` (``src/IBQ/modules/ema.py``, the
same as Open-MAGVIT2's); they import torch, einops and numpy only. For each configuration
below, the modules of SEED-Voken's ``VQModel`` (Open-MAGVIT2) or ``IBQ`` (``encoder``,
``decoder``, ``quantize`` and, for IBQ, ``quant_conv`` and ``post_quant_conv``; the
Lightning classes around them are not needed) are built with random values in every
parameter (norm scales and biases included), their ``LitEma`` is made as the Lightning
class makes it (``model_ema``, a copy of those values), then every parameter is drawn
again (the training weights, which the checkpoint also holds). The whole is saved as a
Lightning checkpoint ``{"state_dict": ...}`` and converted by vqtok; SEED-Voken's side then
runs under its EMA weights (``LitEma.copy_to``, what its ``ema_scope`` does for
evaluation). Four random images in [-1, 1] are encoded by both (SEED-Voken: ``encode``'s path, encoder, quant_conv, quantize, its
indices) and the ids decoded by both (SEED-Voken: ``get_codebook_entry`` of the ids, then
post_quant_conv and the decoder).

Run: python benchmarks/seed_voken_parity.py /tmp/seed_voken
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.interop.references import randomize
from vqtok.interop.seed_voken import load_seed_voken

CONFIGS = [
    # (name, family, ddconfig, codebook size, embed dim, image side)
    ("Open-MAGVIT2, f4, 2^18 codes", "magvit2",
     {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 2, "z_channels": 18}, 2**18, 18, 64),
    ("Open-MAGVIT2, f16 (the 256-L layout, narrower), 2^14 codes", "magvit2",
     {"ch": 32, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "z_channels": 14}, 2**14, 14,
     128),
    ("IBQ, f16 (the released layout, narrower), 16,384 codes of dim 64", "ibq",
     {"ch": 32, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "z_channels": 64,
      "attn_resolutions": [16], "resolution": 256}, 16384, 64, 128),
    ("IBQ, f4, 262,144 codes of dim 32", "ibq",
     {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 32,
      "attn_resolutions": [64], "resolution": 256}, 262144, 32, 64),
]


def load(folder: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"seed_voken_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(folder: Path, family: str, dd: dict, n_embed: int, embed_dim: int,
          seed: int) -> nn.Module:
    full = {"double_z": False, "in_channels": 3, "out_ch": 3, "resolution": 128,
            "dropout": 0.0, **dd}
    model = nn.Module()
    if family == "magvit2":
        arch = load(folder, "magvit2_model")
        full = {k: v for k, v in full.items() if k not in ("dropout", "attn_resolutions")}
        model.encoder, model.decoder = arch.Encoder(**full), arch.Decoder(**full)
        model.quantize = load(folder, "lfq").LFQ(dim=embed_dim, codebook_size=n_embed)
    else:
        arch = load(folder, "ibq_model")
        model.encoder, model.decoder = arch.Encoder(**full), arch.Decoder(**full)
        model.quantize = load(folder, "ibq_quantize").IndexPropagationQuantize(
            n_embed, embed_dim, beta=0.25, use_entropy_loss=True)
        model.quant_conv = nn.Conv2d(full["z_channels"], embed_dim, 1)
        model.post_quant_conv = nn.Conv2d(embed_dim, full["z_channels"], 1)
    return randomize(model, seed)


def reference_ids_and_pixels(model: nn.Module, family: str, x: torch.Tensor):
    with torch.no_grad():
        if family == "magvit2":
            h = model.encoder(x)
            (_, _, ids), _ = model.quantize(h, return_loss_breakdown=True)
            ids = ids.reshape(x.shape[0], *h.shape[2:])
            codes = model.quantize.get_codebook_entry(
                ids.reshape(x.shape[0], -1), (x.shape[0], *h.shape[2:], h.shape[1]), None)
            return ids, model.decoder(codes)
        h = model.quant_conv(model.encoder(x))
        _, _, (_, _, ids) = model.quantize(h)
        ids = ids.reshape(x.shape[0], *h.shape[2:])
        codes = model.quantize.get_codebook_entry(ids.flatten(),
                                                  (x.shape[0], *h.shape[2:], h.shape[1]))
        return ids, model.decoder(model.post_quant_conv(codes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the scratch folder of SEED-Voken's files")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    for seed, (name, family, dd, n_embed, embed_dim, side) in enumerate(CONFIGS):
        reference = build(args.source, family, dd, n_embed, embed_dim, seed)
        reference.model_ema = load(args.source, "ema").LitEma(reference)
        randomize(reference, 100 + seed)  # the training weights, not the ones to convert
        path = folder / f"{seed}.ckpt"
        torch.save({"state_dict": reference.state_dict(), "global_step": 0}, path)
        converted = load_seed_voken(path)
        reference.model_ema.copy_to(reference)
        x = torch.rand(4, 3, side, side, generator=torch.Generator().manual_seed(7)) * 2 - 1
        ids, pixels = reference_ids_and_pixels(reference, family, x)
        with torch.no_grad():
            ours = converted.model.encode(x).indices
            decoded = converted.model.decode_indices(ours)
        print(f"{name}: {type(converted.model.quantizer).__name__}; ids equal at "
              f"{int((ours == ids).sum())} of {ids.numel()} positions ({len(ids.unique())} "
              f"distinct codes); decoded pixels max |diff| "
              f"{(decoded - pixels).abs().max().item():.1e} (values up to "
              f"{pixels.abs().max().item():.2f}); notes: {converted.ignored}")
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
