"""The quantizer contract (docs/algorithms.md#quantizer-contract), checked for every quantizer configuration
x spatial rank (1D, 2D, 3D) x precision (float32, bf16 autocast on CPU), in the pattern of
timm's test_models.py: one table of configurations, every test parametrised over it.

A multi-stage quantizer (``num_stages = S``, the residual ones) returns ids with a trailing
stage axis, ``(B, *spatial, s)``: ``s = S`` in eval mode, ``1 <= s <= S`` in training under
quantize dropout."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable

import pytest
import torch

from vqtok.metrics import CodebookUsage
from vqtok.quantizers import (
    BSQ,
    FSQ,
    IBQ,
    LFQ,
    Quantizer,
    ResidualQuantizer,
    SimVQ,
    VectorQuantizer,
)
from vqtok.registry import build, spec_of

# name -> (factory, expected codebook_size, expected dim)
CONFIGS: dict[str, tuple[Callable[[], Quantizer], int, int]] = {
    "vq-ste": (lambda: VectorQuantizer(64, 8, grad_estimator="ste"), 64, 8),
    "vq-rotation": (lambda: VectorQuantizer(64, 8, grad_estimator="rotation"), 64, 8),
    "vq-ema-restart": (
        lambda: VectorQuantizer(64, 8, ema_decay=0.9, restart_threshold=0.9, usage_decay=0.5),
        64,
        8,
    ),
    "vq-cosine": (lambda: VectorQuantizer(64, 8, cosine=True), 64, 8),
    "simvq": (lambda: SimVQ(64, 8), 64, 8),
    "simvq-rotation": (lambda: SimVQ(64, 8, grad_estimator="rotation"), 64, 8),
    "ibq": (lambda: IBQ(64, 8), 64, 8),
    "ibq-blocks-no-entropy": (lambda: IBQ(64, 8, entropy_weight=0.0, softmax_rows=7), 64, 8),
    "fsq": (lambda: FSQ(levels=[8, 5, 5, 5]), 1000, 4),
    "fsq-projection": (lambda: FSQ(levels=[8, 6, 5], dim=8), 240, 8),
    "lfq": (lambda: LFQ(bits=6), 64, 6),
    "lfq-projection-grouped": (
        lambda: LFQ(bits=6, dim=8, codebook_entropy="grouped", entropy_group_size=4), 64, 8
    ),
    "bsq": (lambda: BSQ(bits=6), 64, 6),
    "bsq-projection-commitment": (lambda: BSQ(codebook_size=64, dim=8, commitment_weight=0.25),
                                  64, 8),
    "residual-vq": (
        lambda: ResidualQuantizer([VectorQuantizer(64, 8) for _ in range(3)]), 64, 8
    ),
    # every kind of stage, given as modules and as specs, with quantize dropout
    "residual-mixed-dropout": (
        lambda: ResidualQuantizer(
            [
                VectorQuantizer(64, 8, grad_estimator="rotation"),
                {"class_path": "vqtok.quantizers.VectorQuantizer",
                 "init_args": {"codebook_size": 64, "dim": 8, "ema_decay": 0.9}},
                SimVQ(64, 8),
                IBQ(64, 8),
                {"class_path": "vqtok.quantizers.FSQ", "init_args": {"levels": [4, 4, 4], "dim": 8}},
                LFQ(bits=6, dim=8),
                BSQ(bits=6, dim=8),
            ],
            quantize_dropout=True,
        ),
        64,
        8,
    ),
}
# Spatial shapes with more rows (B * prod(spatial) >= 80) than the VQ codebooks have codes.
SPATIAL = {1: (40,), 2: (6, 7), 3: (3, 4, 5)}
PRECISIONS = ["fp32", "bf16-autocast"]
BATCH = 2


_WARM: dict[str, Quantizer] = {}


def make(name: str) -> Quantizer:
    """A fresh copy of a seeded quantizer that has seen one training batch (data-dependent
    init, if any), in training mode."""
    if name not in _WARM:
        torch.manual_seed(0)
        factory, _, _ = CONFIGS[name]
        quantizer = factory()
        quantizer.train()
        quantizer(feature_map(quantizer.dim, 2, seed=100))
        _WARM[name] = quantizer
    return copy.deepcopy(_WARM[name]).train()


def feature_map(dim: int, rank: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, dim, *SPATIAL[rank], generator=gen)


def run(quantizer: Quantizer, z: torch.Tensor, precision: str):
    """Forward ``z`` in the given precision: plain float32, or under CPU bf16 autocast."""
    if precision == "fp32":
        return quantizer(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return quantizer(z)


def ids_shape(quantizer: Quantizer, spatial: tuple[int, ...], batch: int = BATCH) -> tuple:
    """The ids' shape in eval mode: ``(B, *spatial)``, plus the stage axis when multi-stage."""
    stages = () if quantizer.num_stages is None else (quantizer.num_stages,)
    return (batch, *spatial, *stages)


def check_ids_shape(quantizer: Quantizer, ids: torch.Tensor, spatial: tuple[int, ...],
                    batch: int = BATCH) -> None:
    """Eval: exactly :func:`ids_shape`. Training: a multi-stage quantizer may run a prefix of
    1 to S stages (quantize dropout)."""
    expected = ids_shape(quantizer, spatial, batch)
    if quantizer.num_stages is None or not quantizer.training:
        assert ids.shape == expected
    else:
        assert ids.shape[:-1] == expected[:-1]
        assert 1 <= ids.shape[-1] <= quantizer.num_stages


def to_precision(z: torch.Tensor, precision: str) -> torch.Tensor:
    """Under autocast the input is bf16, as an encoder running under autocast hands it."""
    return z if precision == "fp32" else z.to(torch.bfloat16)


config_names = pytest.mark.parametrize("name", list(CONFIGS))
ranks = pytest.mark.parametrize("rank", list(SPATIAL))
precisions = pytest.mark.parametrize("precision", PRECISIONS)


@config_names
def test_is_a_quantizer_with_declared_sizes(name: str) -> None:
    _, codebook_size, dim = CONFIGS[name]
    quantizer = make(name)
    assert isinstance(quantizer, Quantizer)
    assert quantizer.codebook_size == codebook_size
    assert quantizer.dim == dim
    assert quantizer.num_stages is None or quantizer.num_stages >= 1


@config_names
@ranks
@precisions
def test_forward_output_contract(name: str, rank: int, precision: str) -> None:
    quantizer = make(name)
    z = to_precision(feature_map(quantizer.dim, rank), precision).requires_grad_(True)
    out = run(quantizer, z, precision)

    assert out.z_q.shape == z.shape
    assert out.z_q.dtype == z.dtype
    assert out.indices.dtype == torch.int64
    check_ids_shape(quantizer, out.indices, SPATIAL[rank])
    assert int(out.indices.min()) >= 0
    assert int(out.indices.max()) < quantizer.codebook_size

    assert isinstance(out.losses, dict)
    for loss_name, loss in out.losses.items():
        assert isinstance(loss_name, str)
        assert isinstance(loss, torch.Tensor) and loss.ndim == 0, loss_name
        assert torch.isfinite(loss), loss_name

    total = out.z_q.float().sum() + sum(out.losses.values())
    total.backward()
    assert z.grad is not None
    assert z.grad.shape == z.shape
    assert torch.isfinite(z.grad.float()).all()
    assert z.grad.float().abs().sum() > 0  # the estimator passes a gradient to the encoder


@config_names
@ranks
@precisions
def test_indices_to_codes_reproduces_z_q_in_eval(name: str, rank: int, precision: str) -> None:
    quantizer = make(name).eval()
    z = to_precision(feature_map(quantizer.dim, rank), precision)
    out = run(quantizer, z, precision)
    assert out.indices.shape == ids_shape(quantizer, SPATIAL[rank])
    codes = quantizer.indices_to_codes(out.indices)
    assert codes.dtype == torch.float32
    assert codes.shape == out.z_q.shape
    assert torch.equal(codes.to(out.z_q.dtype), out.z_q)
    # the same memory layout too: a decoder's kernels may round differently by layout, and
    # decode_indices must reproduce decode(z_q) bit for bit
    assert codes.stride() == out.z_q.stride()


@config_names
@ranks
def test_bf16_autocast_computes_in_float32(name: str, rank: int) -> None:
    """Under autocast, the ids (and, for a float32 input, z_q) are those of float32 maths on
    the same input values: rounding in low precision inside a quantizer picks other codes."""
    quantizer = make(name).eval()
    z = feature_map(quantizer.dim, rank)
    reference = quantizer(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_fp32_input = quantizer(z)
    assert torch.equal(autocast_fp32_input.indices, reference.indices)
    assert autocast_fp32_input.z_q.dtype == torch.float32
    assert torch.equal(autocast_fp32_input.z_q, reference.z_q)

    z_bf16 = z.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_bf16_input = quantizer(z_bf16)
    assert torch.equal(autocast_bf16_input.indices, quantizer(z_bf16.float()).indices)

    # Decoding ids (e.g. a tokenizer's decode under autocast) is float32 maths too.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = quantizer.indices_to_codes(reference.indices)
    assert codes.dtype == torch.float32
    assert torch.equal(codes, quantizer.indices_to_codes(reference.indices))


@config_names
@ranks
def test_bad_feature_maps_raise(name: str, rank: int) -> None:
    quantizer = make(name)
    dim = quantizer.dim
    with pytest.raises(ValueError, match=str(dim + 1)):
        quantizer(feature_map(dim + 1, rank))
    with pytest.raises(ValueError, match="int64"):
        quantizer(torch.zeros(BATCH, dim, *SPATIAL[rank], dtype=torch.int64))
    z = feature_map(dim, rank)
    z.view(-1)[5] = float("nan")
    with pytest.raises(ValueError, match="non-finite|NaN"):
        quantizer(z)


@config_names
@ranks
def test_bad_ids_raise(name: str, rank: int) -> None:
    quantizer = make(name).eval()
    shape = ids_shape(quantizer, SPATIAL[rank])
    k = quantizer.codebook_size
    too_big = torch.zeros(shape, dtype=torch.int64)
    too_big.view(-1)[3] = k
    with pytest.raises(ValueError, match=str(k)):
        quantizer.indices_to_codes(too_big)
    negative = torch.zeros(shape, dtype=torch.int64)
    negative.view(-1)[0] = -1
    with pytest.raises(ValueError, match="-1"):
        quantizer.indices_to_codes(negative)
    with pytest.raises(ValueError, match="float32"):
        quantizer.indices_to_codes(torch.zeros(shape, dtype=torch.float32))
    if quantizer.num_stages is not None:  # one stage more than there are, or no stage axis
        more = (*shape[:-1], quantizer.num_stages + 1)
        with pytest.raises(ValueError, match=str(quantizer.num_stages + 1)):
            quantizer.indices_to_codes(torch.zeros(more, dtype=torch.int64))
        if rank == 1:  # (B, L) ids read as (B, *spatial, stages) lack a spatial dim
            with pytest.raises(ValueError, match="stage"):
                quantizer.indices_to_codes(torch.zeros(BATCH, 1, dtype=torch.int64))


@config_names
def test_batch_smaller_than_codebook(name: str) -> None:
    """A first training batch with fewer rows than codes (3 < 64) must still work."""
    torch.manual_seed(0)
    quantizer = CONFIGS[name][0]().train()
    z = feature_map(quantizer.dim, 1)[:1, :, :3].clone().requires_grad_(True)
    out = quantizer(z)
    check_ids_shape(quantizer, out.indices, (3,), batch=1)
    (out.z_q.sum() + sum(out.losses.values())).backward()
    assert torch.isfinite(z.grad).all()
    for loss in out.losses.values():
        assert torch.isfinite(loss)


@config_names
def test_rebuilt_from_registry_spec_gives_same_output(name: str) -> None:
    """The spec is plain JSON (an exported tokenizer's config.json holds it) and rebuilds
    the same quantizer."""
    quantizer = make(name).eval()
    spec = spec_of(quantizer)
    rebuilt = build(json.loads(json.dumps(spec)))
    assert type(rebuilt) is type(quantizer)
    rebuilt.load_state_dict(quantizer.state_dict(), strict=True)
    rebuilt.eval()
    z = feature_map(quantizer.dim, 2, seed=7)
    expected, got = quantizer(z), rebuilt(z)
    assert torch.equal(got.indices, expected.indices)
    assert torch.equal(got.z_q, expected.z_q)


@config_names
def test_codebook_usage_metric_accepts_indices(name: str) -> None:
    quantizer = make(name).eval()
    metric = CodebookUsage(quantizer.codebook_size)
    batches = [quantizer(feature_map(quantizer.dim, rank, seed=rank)).indices for rank in SPATIAL]
    for ids in batches:
        metric.update(ids)
    everything = torch.cat([ids.reshape(-1) for ids in batches])
    expected = torch.bincount(everything, minlength=quantizer.codebook_size)
    assert torch.equal(metric.counts, expected)
    stats = metric.compute()
    used = len(set(everything.tolist()))
    assert int(stats["dead_codes"]) == quantizer.codebook_size - used
    assert 1.0 <= float(stats["perplexity"]) <= used * (1 + 1e-12)
    assert float(stats["usage"]) == pytest.approx(used / quantizer.codebook_size)
    assert math.isfinite(float(stats["normalized_entropy"]))
