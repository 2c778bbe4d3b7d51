"""The reference implementations the conversion tests compare against, and sources laid
out as each project publishes them (docs/interop.md).

diffusers is the ``interop-test`` extra of ``make install``; taming-transformers' model
code comes from its PyPI package (installed with ``--no-deps`` by ``make install``),
loaded by file path because its package imports parts of an old Lightning. A missing
reference is an error, never a skip: these tests are the evidence that conversion is
exact.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import yaml
from torch import nn

TAMING_HINT = "the taming reference is missing: run `make install` (pip install --no-deps " \
              "taming-transformers==0.0.1)"


def taming_module(relative: str) -> ModuleType:
    """A file of the taming-transformers package, loaded by path (``relative`` such as
    ``taming/modules/vqvae/quantize.py``)."""
    try:
        path = Path(importlib.metadata.distribution("taming-transformers").locate_file(relative))
    except importlib.metadata.PackageNotFoundError as err:
        raise RuntimeError(TAMING_HINT) from err
    if not path.is_file():
        raise RuntimeError(f"{TAMING_HINT} ({path} is not there)")
    spec = importlib.util.spec_from_file_location(f"taming_ref_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random values in every parameter, norm scales and biases included, so that no layer
    of a wrong conversion can hide behind an initial value of 0 or 1. Codebooks (any
    parameter named ``embedding``) get unit-scale codes, as trained ones have."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "embedding" in name:
                param.copy_(noise)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            elif param.ndim == 1:  # a norm's scale
                param.copy_(1 + 0.2 * noise)
            else:
                fan_in = param[0].numel()
                param.copy_(noise / fan_in**0.5)
    return model.eval()


def taming_vqgan(ddconfig: dict[str, Any], embed_dim: int, n_embed: int, seed: int
                 ) -> nn.Module:
    """taming's VQGAN (``taming.models.vqgan.VQModel``'s modules, without its Lightning
    class): ``encoder``, ``decoder``, ``quantize``, ``quant_conv``, ``post_quant_conv``."""
    model_py = taming_module("taming/modules/diffusionmodules/model.py")
    quantize_py = taming_module("taming/modules/vqvae/quantize.py")
    vqgan = nn.Module()
    vqgan.encoder = model_py.Encoder(**ddconfig)
    vqgan.decoder = model_py.Decoder(**ddconfig)
    vqgan.quantize = quantize_py.VectorQuantizer(n_embed, embed_dim, beta=0.25)
    vqgan.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
    vqgan.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
    return randomize(vqgan, seed)


def taming_ids_and_pixels(vqgan: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """taming's ids of ``x`` (``VQModel.encode``: encoder, quant_conv, quantize) and its
    pixels decoded from them (``decode_code``'s path: the codes, post_quant_conv, decoder)."""
    with torch.no_grad():
        h = vqgan.quant_conv(vqgan.encoder(x))
        _, _, (_, _, ids) = vqgan.quantize(h)
        ids = ids.reshape(x.shape[0], h.shape[2], h.shape[3])
        codes = vqgan.quantize.embedding.weight[ids].permute(0, 3, 1, 2)
        pixels = vqgan.decoder(vqgan.post_quant_conv(codes))
    return ids, pixels


def write_taming_logdir(root: Path, vqgan: nn.Module, ddconfig: dict[str, Any], embed_dim: int,
                        n_embed: int, extra_state: dict[str, torch.Tensor] | None = None) -> Path:
    """A log folder as taming publishes one: ``configs/model.yaml`` and a Lightning
    checkpoint ``ckpts/last.ckpt`` with the discriminator and LPIPS weights under ``loss.*``,
    optimizer states, counters and a callback state keyed by the callback's class."""
    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint

    (root / "configs").mkdir(parents=True)
    (root / "ckpts").mkdir()
    config = {"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel",
                        "params": {"embed_dim": embed_dim, "n_embed": n_embed,
                                   "ddconfig": ddconfig,
                                   "lossconfig": {"target": "taming.modules.losses.vqperceptual"
                                                            ".VQLPIPSWithDiscriminator",
                                                  "params": {"disc_start": 250001}}}}}
    (root / "configs" / "model.yaml").write_text(yaml.safe_dump(config))
    state = dict(vqgan.state_dict())
    state.update({"loss.discriminator.main.0.weight": torch.randn(64, 3, 4, 4),
                  "loss.perceptual_loss.net.slice1.0.weight": torch.randn(64, 3, 3, 3),
                  "loss.logvar": torch.zeros(())})
    state.update(extra_state or {})
    ckpt = {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.0.8",
            "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5),
                                            "best_model_path": "logs/ckpts/epoch=3.ckpt"}},
            "optimizer_states": [{"state": {0: {"step": 10, "exp_avg": torch.zeros(3)}},
                                  "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9),
                                                    "params": [0]}]}],
            "lr_schedulers": [], "state_dict": state}
    torch.save(ckpt, root / "ckpts" / "last.ckpt")
    return root
