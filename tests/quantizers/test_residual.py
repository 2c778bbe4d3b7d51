"""ResidualQuantizer (SoundStream, Zeghidour et al. 2021) against independent references:
the recursion r_0 = z, q_s = Q_s(r_{s-1}), r_s = r_{s-1} - q_s run by hand through the
stages' own public forward; a depth-1 stack against its base quantizer bit for bit; quantize
dropout's depths; prefix decoding against partial sums; the JSON spec; bad input."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import torch

from vqtok.quantizers import FSQ, LFQ, ResidualQuantizer, SimVQ, VectorQuantizer
from vqtok.registry import build, spec_of


def feature_map(dim: int = 8, seed: int = 0, shape: tuple[int, ...] = (2, 5, 6)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape[0], dim, *shape[1:], generator=gen)


def vq_stack(depth: int = 3, **kwargs) -> ResidualQuantizer:
    return ResidualQuantizer([VectorQuantizer(64, 8) for _ in range(depth)], **kwargs)


def fsq_stack(depth: int = 4, **kwargs) -> ResidualQuantizer:
    """Stateless stages (no init, no EMA): every forward is a pure function of z."""
    torch.manual_seed(0)
    return ResidualQuantizer([FSQ(levels=[4, 4, 4], dim=8) for _ in range(depth)], **kwargs)


def warmed(quantizer: ResidualQuantizer) -> ResidualQuantizer:
    """After one training batch (the VQ stages' k-means init), in eval mode."""
    torch.manual_seed(1)
    quantizer.train()(feature_map(seed=99, shape=(4, 8, 8)))
    return quantizer.eval()


@pytest.mark.parametrize("make", [vq_stack, fsq_stack])
def test_z_q_is_the_sum_of_the_stages_codes_on_successive_residuals(make) -> None:
    quantizer = warmed(make())
    z = feature_map(seed=3)
    out = quantizer(z)
    residual, total = z, torch.zeros_like(z)
    for s, stage in enumerate(quantizer.stages):  # the recursion, by hand
        stage_out = stage(residual)
        assert torch.equal(out.indices[..., s], stage_out.indices)
        total = total + stage_out.z_q
        residual = residual - stage_out.z_q
    assert out.indices.shape == (2, 5, 6, quantizer.num_stages)
    assert torch.equal(out.z_q, total)
    # and decoding the ids gives the same sum, stage by stage
    codes = sum(stage.indices_to_codes(out.indices[..., s])
                for s, stage in enumerate(quantizer.stages))
    assert torch.equal(quantizer.indices_to_codes(out.indices), codes)


def test_each_stage_lowers_the_error_and_losses_are_named_by_stage() -> None:
    quantizer = warmed(vq_stack(4))
    z = feature_map(seed=4, shape=(4, 8, 8))
    out = quantizer(z)
    errors = [float((quantizer.indices_to_codes(out.indices[..., : s + 1]).detach() - z)
                    .pow(2).mean())
              for s in range(4)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]
    assert set(out.losses) == {f"stage{s}/{name}" for s in range(4)
                               for name in ("codebook", "commitment")}


@pytest.mark.parametrize(
    "factory",
    [
        lambda: VectorQuantizer(64, 8),  # k-means init on the first batch (global RNG)
        lambda: VectorQuantizer(64, 8, ema_decay=0.9, restart_threshold=0.5, usage_decay=0.5),
        lambda: SimVQ(64, 8, grad_estimator="rotation"),
        lambda: FSQ(levels=[8, 5, 5, 5], dim=8),
        lambda: LFQ(bits=6, dim=8),
    ],
    ids=["vq-kmeans", "vq-ema-restart", "simvq-rotation", "fsq-projection", "lfq-projection"],
)
def test_depth_one_equals_its_base_quantizer_bit_for_bit(factory) -> None:
    torch.manual_seed(0)
    base = factory().train()
    torch.manual_seed(0)
    stacked = ResidualQuantizer([factory()], quantize_dropout=True).train()
    for step in range(3):  # training steps: init, EMA, restarts all happen alike
        z = feature_map(seed=step, shape=(4, 6, 6))
        z_base, z_stacked = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
        torch.manual_seed(100 + step)
        out_base = base(z_base)
        torch.manual_seed(100 + step)
        out_stacked = stacked(z_stacked)
        assert torch.equal(out_stacked.z_q, out_base.z_q)
        assert torch.equal(out_stacked.indices, out_base.indices.unsqueeze(-1))
        assert out_stacked.losses.keys() == {f"stage0/{k}" for k in out_base.losses}
        for name, value in out_base.losses.items():
            assert torch.equal(out_stacked.losses[f"stage0/{name}"], value)
        (out_base.z_q.sum() + sum(out_base.losses.values())).backward()
        (out_stacked.z_q.sum() + sum(out_stacked.losses.values())).backward()
        assert torch.equal(z_stacked.grad, z_base.grad)
    base_state = base.state_dict()
    for key, value in stacked.state_dict().items():
        assert torch.equal(value, base_state[key.removeprefix("stages.0.")])


def test_gradient_reaches_the_encoder_once_through_straight_through_stages() -> None:
    """r_s = r_{s-1} - q_s with straight-through stages: d z_q / d z is the identity."""
    quantizer = warmed(vq_stack(3)).train()
    z = feature_map(seed=5).requires_grad_(True)
    g = torch.randn_like(z)
    (quantizer(z).z_q * g).sum().backward()
    assert torch.equal(z.grad, g)


def test_quantize_dropout_uses_every_depth_and_never_drops_the_first_stage() -> None:
    depth = 4
    quantizer = fsq_stack(depth, quantize_dropout=True).train()
    z = feature_map(seed=6)
    rng_before = torch.get_rng_state()
    seen = Counter()
    for _ in range(400):
        out = quantizer(z)
        n = out.indices.shape[-1]
        seen[n] += 1
        # the prefix that ran: its ids decode to z_q, and only its stages report losses
        assert torch.equal(quantizer.indices_to_codes(out.indices), out.z_q)
    assert set(seen) == set(range(1, depth + 1))  # 1..S, never 0
    assert min(seen.values()) > 400 / depth / 2  # roughly uniform
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    quantizer.eval()
    assert all(quantizer(z).indices.shape[-1] == depth for _ in range(5))


def test_quantize_dropout_draws_are_the_same_on_every_copy() -> None:
    """Two copies (two DDP ranks) with the same seed draw the same depths; another seed
    draws others."""
    a, b, c = (fsq_stack(4, quantize_dropout=True, dropout_seed=seed).train() for seed in (3, 3, 4))
    z = feature_map(seed=7)
    depths = [[q(z).indices.shape[-1] for _ in range(50)] for q in (a, b, c)]
    assert depths[0] == depths[1]
    assert depths[0] != depths[2]


def test_dropped_stages_report_no_losses_and_get_no_gradient() -> None:
    quantizer = warmed(vq_stack(4, quantize_dropout=True)).train()
    z = feature_map(seed=8)
    for _ in range(20):
        quantizer.zero_grad(set_to_none=True)
        out = quantizer(z)
        n = out.indices.shape[-1]
        assert {name.split("/")[0] for name in out.losses} == {f"stage{s}" for s in range(n)}
        sum(out.losses.values()).backward()
        for s, stage in enumerate(quantizer.stages):
            assert (stage.codebook.grad is not None) == (s < n)


def test_indices_to_codes_of_a_prefix_is_the_partial_sum() -> None:
    quantizer = warmed(vq_stack(4))
    z = feature_map(seed=9)
    ids = quantizer(z).indices
    for s in range(1, 5):
        partial = sum(quantizer.stages[t].indices_to_codes(ids[..., t]) for t in range(s))
        assert torch.equal(quantizer.indices_to_codes(ids[..., :s]), partial)
        # the same as the forward pass of the first s stages alone
        prefix = ResidualQuantizer(list(quantizer.stages[:s])).eval()
        assert torch.equal(prefix(z).z_q, partial)


def test_spec_is_plain_json_and_rebuilds_stages_given_as_modules_or_specs() -> None:
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(
        [VectorQuantizer(64, 8, ema_decay=0.9),
         {"class_path": "vqtok.quantizers.SimVQ", "init_args": {"codebook_size": 64, "dim": 8}},
         FSQ(levels=[4, 4, 4], dim=8)],
        quantize_dropout=True, dropout_seed=5,
    )
    spec = json.loads(json.dumps(spec_of(quantizer)))
    assert spec["class_path"] == "vqtok.quantizers.residual.ResidualQuantizer"
    assert spec["init_args"]["quantize_dropout"] is True
    assert spec["init_args"]["dropout_seed"] == 5
    stages = spec["init_args"]["stages"]
    assert [s["class_path"].rsplit(".", 1)[1] for s in stages] == ["VectorQuantizer", "SimVQ",
                                                                   "FSQ"]
    assert stages[0]["init_args"]["ema_decay"] == 0.9
    rebuilt = build(copy.deepcopy(spec))
    assert spec_of(rebuilt) == spec
    rebuilt.load_state_dict(quantizer.state_dict(), strict=True)
    quantizer.eval(), rebuilt.eval()
    z = feature_map(seed=10)
    assert torch.equal(rebuilt(z).z_q, quantizer(z).z_q)


def test_copies_of_one_spec_are_independent_stages() -> None:
    spec = {"class_path": "vqtok.quantizers.VectorQuantizer",
            "init_args": {"codebook_size": 64, "dim": 8, "init": "normal"}}
    quantizer = ResidualQuantizer([spec, spec])
    first, second = quantizer.stages
    assert first is not second
    assert not torch.equal(first.codebook, second.codebook)


@pytest.mark.parametrize(
    ("stages", "kwargs", "match"),
    [
        ([], {}, "1 to 256 quantizers"),
        (VectorQuantizer(64, 8), {}, "list"),
        ({"class_path": "vqtok.quantizers.FSQ", "init_args": {"levels": [4, 4]}}, {}, "list"),
        ([VectorQuantizer(64, 8), VectorQuantizer(32, 8)], {}, "stage 1 has \\(32, 8\\)"),
        ([VectorQuantizer(64, 8), VectorQuantizer(64, 4)], {}, "stage 1 has \\(64, 4\\)"),
        ([torch.nn.Linear(8, 8)], {}, "stage 0 must be a vqtok Quantizer, got Linear"),
        (["vq"], {}, "stage 0 must be a Quantizer module or a"),
        ([{"class_path": "os.system", "init_args": {}}], {}, "unknown class_path"),
        ([VectorQuantizer(64, 8)], {"quantize_dropout": 1}, "quantize_dropout"),
        ([VectorQuantizer(64, 8)], {"dropout_seed": -1}, "dropout_seed"),
    ],
)
def test_bad_arguments_raise_one_clear_value_error(stages, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ResidualQuantizer(stages, **kwargs)


def test_a_residual_stage_or_an_unregistered_quantizer_is_refused() -> None:
    with pytest.raises(ValueError, match="multi-stage"):
        ResidualQuantizer([vq_stack(2)])

    class Unregistered(VectorQuantizer):
        pass

    with pytest.raises(ValueError, match="not a registered vqtok class"):
        ResidualQuantizer([Unregistered(64, 8)])


def test_ids_need_the_stage_axis() -> None:
    quantizer = warmed(vq_stack(3))
    ids = quantizer(feature_map(seed=11)).indices  # (2, 5, 6, 3)
    with pytest.raises(ValueError, match="1 to 3 stages"):
        quantizer.indices_to_codes(torch.zeros(2, 5, 6, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="1 to 3 stages"):
        quantizer.indices_to_codes(ids[..., :0])
    # (B, H, W) ids without a stage axis read as 1-D positions with W stages
    with pytest.raises(ValueError, match="6 stages"):
        quantizer.indices_to_codes(ids[..., 0])
