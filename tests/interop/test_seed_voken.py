"""SEED-Voken checkpoints converted exactly (docs/interop.md#seed-voken).

IBQ's encoder and decoder are taming's model file unchanged, so its fixtures are taming's
modules (random weights) with a largest-logit id rule written here. Open-MAGVIT2's are
state dicts in its published key layout with random weights, built here, and its
reference is a float64 re-implementation of the MAGVIT-v2 encoder, the LFQ ids and the
decoder with its adaptive group norm, written here from the layout's facts (functional:
it reads the state dict directly). Both are saved as Lightning checkpoints with the
discriminator's ``loss.*`` tensors and LitEma's ``model_ema.*`` copies, which are the
weights to convert. A one-off run against SEED-Voken's own model files is recorded in
benchmarks/RESULTS_seed_voken_parity.md."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.interop.references import taming_vqgan
from vqtok.cli import main
from vqtok.interop import ConversionError, convert
from vqtok.interop.seed_voken import load_seed_voken
from vqtok.models.magvit2 import AdaptiveGroupNorm
from vqtok.quantizers import IBQ, LFQ
from vqtok.tokenizers import load_tokenizer

PIXEL_TOLERANCE = 1e-4
"""float32 against the reference (float64 for Open-MAGVIT2, float32 taming for IBQ)."""
GROUPS = 32
EPS = 1e-6


def lightning_checkpoint(weights: dict[str, torch.Tensor], seed: int) -> dict:
    """A SEED-Voken Lightning checkpoint of ``weights``: the EMA copies under LitEma's
    names (the parameter names without dots), other (training) values under the names
    themselves, discriminator tensors under ``loss.*``, and Lightning's bookkeeping."""
    generator = torch.Generator().manual_seed(seed)
    state = {key: value + torch.randn(value.shape, generator=generator)
             for key, value in weights.items()}  # the training weights, not converted
    state.update({"loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4),
                  "loss.logvar": torch.zeros(())})
    state.update({f"model_ema.{key.replace('.', '')}": value for key, value in weights.items()})
    state.update({"model_ema.lossdiscriminatormain0weight": torch.randn(8, 3, 4, 4),
                  "model_ema.decay": torch.tensor(0.999), "model_ema.num_updates":
                  torch.tensor(-1, dtype=torch.int32)})
    return {"epoch": 2, "global_step": 500, "pytorch-lightning_version": "2.2.1",
            "state_dict": state, "optimizer_states": [], "lr_schedulers": []}


# ---- Open-MAGVIT2: the published layout and a float64 reference ------------------------------
def _resblock(state: dict, prefix: str, cin: int, cout: int, gen: torch.Generator) -> None:
    def rnd(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    state[f"{prefix}.norm1.weight"] = 1 + rnd(cin, scale=0.2)
    state[f"{prefix}.norm1.bias"] = rnd(cin, scale=0.1)
    state[f"{prefix}.conv1.weight"] = rnd(cout, cin, 3, 3, scale=(9 * cin) ** -0.5)
    state[f"{prefix}.norm2.weight"] = 1 + rnd(cout, scale=0.2)
    state[f"{prefix}.norm2.bias"] = rnd(cout, scale=0.1)
    state[f"{prefix}.conv2.weight"] = rnd(cout, cout, 3, 3, scale=(9 * cout) ** -0.5)
    if cin != cout:
        state[f"{prefix}.nin_shortcut.weight"] = rnd(cout, cin, 1, 1, scale=cin ** -0.5)


def magvit_state(ch: int, mult: list[int], blocks: int, z: int, seed: int) -> dict:
    """Random weights under Open-MAGVIT2's key names (``improved_model.py``'s layout)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    s: dict[str, torch.Tensor] = {"encoder.conv_in.weight": rnd(ch, 3, 3, 3, scale=27 ** -0.5)}
    width = ch
    for level, m in enumerate(mult):
        for j in range(blocks):
            _resblock(s, f"encoder.down.{level}.block.{j}", width, ch * m, gen)
            width = ch * m
        if level < len(mult) - 1:
            s[f"encoder.down.{level}.downsample.weight"] = rnd(width, width, 3, 3,
                                                              scale=(9 * width) ** -0.5)
            s[f"encoder.down.{level}.downsample.bias"] = rnd(width, scale=0.1)
    for j in range(blocks):
        _resblock(s, f"encoder.mid_block.{j}", width, width, gen)
    s["encoder.norm_out.weight"] = 1 + rnd(width, scale=0.2)
    s["encoder.norm_out.bias"] = rnd(width, scale=0.1)
    s["encoder.conv_out.weight"] = rnd(z, width, 1, 1, scale=width ** -0.5)
    s["encoder.conv_out.bias"] = rnd(z, scale=0.1)

    s["decoder.conv_in.weight"] = rnd(width, z, 3, 3, scale=(9 * z) ** -0.5)
    s["decoder.conv_in.bias"] = rnd(width, scale=0.1)
    for j in range(blocks):
        _resblock(s, f"decoder.mid_block.{j}", width, width, gen)
    for level in reversed(range(len(mult))):
        for name in ("gamma", "beta"):
            s[f"decoder.adaptive.{level}.{name}.weight"] = rnd(width, z, scale=z ** -0.5)
            s[f"decoder.adaptive.{level}.{name}.bias"] = (1.0 if name == "gamma" else 0.0) \
                + rnd(width, scale=0.1)
        for j in range(blocks):
            _resblock(s, f"decoder.up.{level}.block.{j}", width, ch * mult[level], gen)
            width = ch * mult[level]
        if level > 0:
            s[f"decoder.up.{level}.upsample.conv1.weight"] = rnd(4 * width, width, 3, 3,
                                                               scale=(9 * width) ** -0.5)
            s[f"decoder.up.{level}.upsample.conv1.bias"] = rnd(4 * width, scale=0.1)
    s["decoder.norm_out.weight"] = 1 + rnd(width, scale=0.2)
    s["decoder.norm_out.bias"] = rnd(width, scale=0.1)
    s["decoder.conv_out.weight"] = rnd(3, width, 3, 3, scale=(9 * width) ** -0.5)
    s["decoder.conv_out.bias"] = rnd(3, scale=0.1)
    return s


def _ref_res(s: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    h = F.conv2d(F.silu(F.group_norm(x, GROUPS, s[f"{p}.norm1.weight"], s[f"{p}.norm1.bias"],
                                     EPS)), s[f"{p}.conv1.weight"], padding=1)
    h = F.conv2d(F.silu(F.group_norm(h, GROUPS, s[f"{p}.norm2.weight"], s[f"{p}.norm2.bias"],
                                     EPS)), s[f"{p}.conv2.weight"], padding=1)
    skip = s.get(f"{p}.nin_shortcut.weight")
    return h + (x if skip is None else F.conv2d(x, skip))


def ref_encode(s: dict, x: torch.Tensor, levels: int, blocks: int) -> torch.Tensor:
    h = F.conv2d(x, s["encoder.conv_in.weight"], padding=1)
    for level in range(levels):
        for j in range(blocks):
            h = _ref_res(s, f"encoder.down.{level}.block.{j}", h)
        if level < levels - 1:
            h = F.conv2d(h, s[f"encoder.down.{level}.downsample.weight"],
                         s[f"encoder.down.{level}.downsample.bias"], stride=2, padding=1)
    for j in range(blocks):
        h = _ref_res(s, f"encoder.mid_block.{j}", h)
    h = F.silu(F.group_norm(h, GROUPS, s["encoder.norm_out.weight"], s["encoder.norm_out.bias"],
                            EPS))
    return F.conv2d(h, s["encoder.conv_out.weight"], s["encoder.conv_out.bias"])


def ref_adaptive_norm(s: dict, p: str, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """GN without affine, scaled by gamma(sqrt(unbiased var(z) + eps)) and shifted by
    beta(mean(z)), per sample, the statistics over all latent positions."""
    b, c, h, w = x.shape
    flat = z.reshape(z.shape[0], z.shape[1], -1)
    p_count = flat.shape[2]
    mean = flat.sum(dim=2) / p_count
    var = ((flat - mean[:, :, None]) ** 2).sum(dim=2) / (p_count - 1)
    scale = (var + EPS).sqrt() @ s[f"{p}.gamma.weight"].t() + s[f"{p}.gamma.bias"]
    shift = mean @ s[f"{p}.beta.weight"].t() + s[f"{p}.beta.bias"]
    groups = x.reshape(b, GROUPS, -1)
    normed = (groups - groups.mean(dim=2, keepdim=True)) / (
        groups.var(dim=2, unbiased=False, keepdim=True) + EPS).sqrt()
    return normed.reshape(b, c, h, w) * scale[:, :, None, None] + shift[:, :, None, None]


def ref_decode(s: dict, z: torch.Tensor, levels: int, blocks: int) -> torch.Tensor:
    h = F.conv2d(z, s["decoder.conv_in.weight"], s["decoder.conv_in.bias"], padding=1)
    for j in range(blocks):
        h = _ref_res(s, f"decoder.mid_block.{j}", h)
    for level in reversed(range(levels)):
        h = ref_adaptive_norm(s, f"decoder.adaptive.{level}", h, z)
        for j in range(blocks):
            h = _ref_res(s, f"decoder.up.{level}.block.{j}", h)
        if level > 0:
            h = F.conv2d(h, s[f"decoder.up.{level}.upsample.conv1.weight"],
                         s[f"decoder.up.{level}.upsample.conv1.bias"], padding=1)
            b, c4, hh, ww = h.shape  # depth to space, depth-column-row order
            h = h.reshape(b, 2, 2, c4 // 4, hh, ww).permute(0, 3, 4, 1, 5, 2)
            h = h.reshape(b, c4 // 4, hh * 2, ww * 2)
    h = F.silu(F.group_norm(h, GROUPS, s["decoder.norm_out.weight"], s["decoder.norm_out.bias"],
                            EPS))
    return F.conv2d(h, s["decoder.conv_out.weight"], s["decoder.conv_out.bias"], padding=1)


def ref_lfq_ids(h: torch.Tensor) -> torch.Tensor:
    """LFQ ids: bit i set where channel i is positive, read as sum_i bit_i 2^i."""
    bits = (h > 0).long()  # (B, z, h, w)
    return (bits * (2 ** torch.arange(h.shape[1]))[None, :, None, None]).sum(dim=1)


MAGVIT_CONFIGS = {
    "two-levels": {"ch": 32, "mult": [1, 2], "blocks": 1, "z": 6},
    "three-levels": {"ch": 32, "mult": [1, 1, 2], "blocks": 2, "z": 10},
}


@pytest.mark.parametrize("name", MAGVIT_CONFIGS)
def test_open_magvit2_ids_and_pixels_equal_the_reference(name: str, tmp_path: Path) -> None:
    cfg = MAGVIT_CONFIGS[name]
    levels = len(cfg["mult"])
    weights = magvit_state(cfg["ch"], cfg["mult"], cfg["blocks"], cfg["z"], seed=levels)
    torch.save(lightning_checkpoint(weights, seed=9), tmp_path / "lfq.ckpt")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    s64 = {k: v.double() for k, v in weights.items()}
    with torch.no_grad():
        h = ref_encode(s64, x.double(), levels, cfg["blocks"])
        ids = ref_lfq_ids(h)
        codes = torch.where(h > 0, 1.0, -1.0).double()
        pixels = ref_decode(s64, codes, levels, cfg["blocks"])
    clear = (h.abs() > 1e-4).all(dim=1)  # every bit's sign is clear
    assert clear.float().mean() > 0.9 and len(ids.unique()) > 4

    converted = load_seed_voken(tmp_path / "lfq.ckpt")
    model = converted.model
    assert isinstance(model.quantizer, LFQ) and model.codebook_size == 2 ** cfg["z"]
    with torch.no_grad():
        ours = model.encode(x).indices
        decoded = model.decode_indices(ids)
    assert torch.equal(ours[clear], ids[clear])
    assert (decoded.double() - pixels).abs().max() < PIXEL_TOLERANCE
    assert converted.ignored[0] == (f"{len(weights)} training weights (their EMA copies, "
                                    f"model_ema.*, were converted: SEED-Voken evaluates "
                                    f"with those)")


def test_adaptive_group_norm_equals_its_float64_definition() -> None:
    torch.manual_seed(0)
    norm = AdaptiveGroupNorm(5, 64, GROUPS, EPS).double()
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn_like(p))
    x, z = torch.randn(3, 64, 8, 6, dtype=torch.float64), torch.randn(3, 5, 2, 3,
                                                                    dtype=torch.float64)
    state = {f"a.{k}": v for k, v in norm.state_dict().items()}
    torch.testing.assert_close(norm(x, z), ref_adaptive_norm(state, "a", x, z), rtol=1e-12,
                               atol=1e-12)


# ---- IBQ: taming's modules with the largest-logit rule -----------------------------------------
def ibq_reference(seed: int, codebook: int = 64, dim: int = 8):
    dd = {"double_z": False, "z_channels": 16, "resolution": 32, "in_channels": 3,
          "out_ch": 3, "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1,
          "attn_resolutions": [8], "dropout": 0.0}
    return taming_vqgan(dd, embed_dim=dim, n_embed=codebook, seed=seed)


def ibq_ids_and_pixels(reference: torch.nn.Module, x: torch.Tensor):
    """argmax_k z . e_k in float64, and the pixels decoded from those codes."""
    with torch.no_grad():
        h = reference.quant_conv(reference.encoder(x))
        rows = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1]).double()
        logits = rows @ reference.quantize.embedding.weight.double().t()
        top = logits.topk(2, dim=1).values
        clear = ((top[:, 0] - top[:, 1]) > 1e-4).reshape(x.shape[0], *h.shape[2:])
        ids = logits.argmax(dim=1).reshape(x.shape[0], *h.shape[2:])
        codes = reference.quantize.embedding.weight[ids].permute(0, 3, 1, 2)
        pixels = reference.decoder(reference.post_quant_conv(codes))
    return ids, pixels, clear


def test_ibq_ids_and_pixels_equal_the_reference(tmp_path: Path) -> None:
    reference = ibq_reference(seed=5)
    torch.save(lightning_checkpoint(dict(reference.state_dict()), seed=6), tmp_path / "ibq.ckpt")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7)) * 2 - 1
    ids, pixels, clear = ibq_ids_and_pixels(reference, x)
    assert clear.float().mean() > 0.9 and len(ids.unique()) > 4

    converted = load_seed_voken(tmp_path / "ibq.ckpt")
    model = converted.model
    assert isinstance(model.quantizer, IBQ) and model.codebook_size == 64
    assert model.encoder.attention_levels == {2}
    with torch.no_grad():
        ours = model.encode(x).indices
        decoded = model.decode_indices(ids)
    assert torch.equal(ours[clear], ids[clear])
    assert (decoded - pixels).abs().max() < PIXEL_TOLERANCE
    assert converted.ignored[:2] == [
        (f"{len(reference.state_dict())} training weights (their EMA copies, model_ema.*, "
         f"were converted: SEED-Voken evaluates with those)"),
        "2 loss.* tensors (discriminator and LPIPS)"]
    # written as a tokenizer directory and loaded back: the same ids (IBQ's rule kept)
    convert("seed-voken", tmp_path / "ibq.ckpt", tmp_path / "tok")
    assert torch.equal(load_tokenizer(tmp_path / "tok").encode(x)[clear], ids[clear])


def test_without_ema_the_training_weights_convert(tmp_path: Path) -> None:
    reference = ibq_reference(seed=8)
    torch.save({"state_dict": dict(reference.state_dict())}, tmp_path / "ibq.ckpt")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ids, _, clear = ibq_ids_and_pixels(reference, x)
    converted = load_seed_voken(tmp_path / "ibq.ckpt")
    with torch.no_grad():
        assert torch.equal(converted.model.encode(x).indices[clear], ids[clear])
    assert converted.ignored == []  # nothing beside the model in this file


def test_convert_command_writes_a_tokenizer(tmp_path: Path, capsys) -> None:
    cfg = MAGVIT_CONFIGS["two-levels"]
    weights = magvit_state(cfg["ch"], cfg["mult"], cfg["blocks"], cfg["z"], seed=11)
    torch.save(lightning_checkpoint(weights, seed=12), tmp_path / "lfq.ckpt")
    assert main(["convert", "--from", "seed-voken", str(tmp_path / "lfq.ckpt"),
                 str(tmp_path / "tok")]) == 0
    assert "converted seed-voken" in capsys.readouterr().out
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    s64 = {k: v.double() for k, v in weights.items()}
    h = ref_encode(s64, x.double(), 2, 1)
    clear = (h.abs() > 1e-4).all(dim=1)
    ids = load_tokenizer(tmp_path / "tok").encode(x)
    assert torch.equal(ids[clear], ref_lfq_ids(h)[clear])


# ---- refusals ---------------------------------------------------------------------------------
def test_an_unknown_layout_is_refused_in_one_line(tmp_path: Path) -> None:
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}},
               tmp_path / "other.ckpt")
    with pytest.raises(ConversionError, match="not a layout SEED-Voken publishes"):
        load_seed_voken(tmp_path / "other.ckpt")
    torch.save({"model": {}}, tmp_path / "llamagen.pt")
    with pytest.raises(ConversionError, match="not a SEED-Voken checkpoint"):
        load_seed_voken(tmp_path / "llamagen.pt")


def test_ema_weights_missing_for_one_tensor_are_refused(tmp_path: Path) -> None:
    reference = ibq_reference(seed=13)
    ckpt = lightning_checkpoint(dict(reference.state_dict()), seed=14)
    del ckpt["state_dict"]["model_ema.decoderconv_outbias"]
    torch.save(ckpt, tmp_path / "ibq.ckpt")
    with pytest.raises(ConversionError, match="EMA weights .* but none for decoder.conv_out.bias"):
        load_seed_voken(tmp_path / "ibq.ckpt")


def test_a_missing_tensor_is_named(tmp_path: Path) -> None:
    cfg = MAGVIT_CONFIGS["two-levels"]
    weights = magvit_state(cfg["ch"], cfg["mult"], cfg["blocks"], cfg["z"], seed=15)
    del weights["decoder.adaptive.1.beta.bias"]
    torch.save({"state_dict": weights}, tmp_path / "lfq.ckpt")
    with pytest.raises(ConversionError, match="no tensor decoder.adaptive.1.beta.bias"):
        load_seed_voken(tmp_path / "lfq.ckpt")
