"""CodebookUsage and usage_stats against an independent numpy computation and the
identities of docs/algorithms.md#codebook-usage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vqtok.metrics import CodebookUsage, usage_stats


def numpy_reference(ids: np.ndarray, k: int) -> dict[str, float]:
    """Usage statistics by a different route: np.unique counts, entropy over used codes."""
    values, counts = np.unique(ids.reshape(-1), return_counts=True)
    p = counts.astype(np.float64) / counts.sum()  # only codes with n_k > 0
    entropy = float(-(p * np.log(p)).sum())
    return {
        "usage": len(values) / k,
        "perplexity": math.exp(entropy),
        "dead_codes": k - len(values),
        "normalized_entropy": entropy / math.log(k),
    }


def assert_matches(stats: dict[str, torch.Tensor], ref: dict[str, float]) -> None:
    assert set(stats) == {"usage", "perplexity", "dead_codes", "normalized_entropy"}
    for name, tensor in stats.items():
        assert tensor.ndim == 0, name
    assert stats["dead_codes"].dtype == torch.int64
    assert int(stats["dead_codes"]) == ref["dead_codes"]
    for name in ("usage", "perplexity", "normalized_entropy"):
        assert float(stats[name]) == pytest.approx(ref[name], rel=1e-12, abs=1e-12), name


@pytest.mark.parametrize("k", [2, 7, 512])
@pytest.mark.parametrize("shape", [(37,), (4, 5, 6), (2, 3, 4, 5)])
def test_matches_numpy_reference(k: int, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(k * 1000 + len(shape))
    # A skewed distribution so that counts differ and some codes stay dead.
    weights = torch.rand(k, generator=gen) ** 4
    ids = torch.multinomial(weights, math.prod(shape), replacement=True, generator=gen)
    ids = ids.reshape(shape)
    metric = CodebookUsage(codebook_size=k)
    metric.update(ids)
    assert_matches(metric.compute(), numpy_reference(ids.numpy(), k))


def test_uniform_use_gives_perplexity_k_and_full_usage() -> None:
    k = 64
    metric = CodebookUsage(k)
    metric.update(torch.arange(k).repeat(5).reshape(5, 8, 8))
    stats = metric.compute()
    assert float(stats["perplexity"]) == pytest.approx(k, rel=1e-12)
    assert float(stats["usage"]) == 1.0
    assert int(stats["dead_codes"]) == 0
    assert float(stats["normalized_entropy"]) == pytest.approx(1.0, rel=1e-12)


def test_constant_code_gives_perplexity_one_and_usage_one_over_k() -> None:
    k = 64
    metric = CodebookUsage(k)
    metric.update(torch.full((3, 4, 4), 17, dtype=torch.int64))
    stats = metric.compute()
    assert float(stats["perplexity"]) == 1.0
    assert float(stats["usage"]) == 1.0 / k
    assert int(stats["dead_codes"]) == k - 1
    assert float(stats["normalized_entropy"]) == 0.0


def test_two_codes_hand_computation() -> None:
    # n = (3, 1, 0, 0): p = (3/4, 1/4); H = -(3/4 ln 3/4 + 1/4 ln 1/4).
    stats = usage_stats(torch.tensor([3, 1, 0, 0]))
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(stats["perplexity"]) == pytest.approx(math.exp(entropy), rel=1e-14)
    assert float(stats["usage"]) == 0.5
    assert int(stats["dead_codes"]) == 2
    assert float(stats["normalized_entropy"]) == pytest.approx(entropy / math.log(4), rel=1e-14)


def test_codebook_of_one_code() -> None:
    metric = CodebookUsage(1)
    metric.update(torch.zeros(10, dtype=torch.int64))
    stats = metric.compute()
    assert float(stats["usage"]) == 1.0
    assert float(stats["perplexity"]) == 1.0
    assert int(stats["dead_codes"]) == 0
    assert float(stats["normalized_entropy"]) == 1.0


def test_merged_state_equals_one_metric_on_everything() -> None:
    k = 300
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, k, (8, 16, 16), generator=gen) // 3  # codes >= 100 stay dead
    first, second, whole = CodebookUsage(k), CodebookUsage(k), CodebookUsage(k)
    first.update(ids[:4])
    second.update(ids[4:])
    whole.update(ids)
    first.merge_state(second)
    assert torch.equal(first.counts, whole.counts)
    merged, reference = first.compute(), whole.compute()
    for name in reference:
        assert torch.equal(merged[name], reference[name]), name
    assert_matches(merged, numpy_reference(ids.numpy(), k))


def test_accumulated_batches_equal_one_big_batch() -> None:
    k = 1000
    gen = torch.Generator().manual_seed(4)
    batches = [torch.randint(0, k, (2, 5, 5), generator=gen) for _ in range(40)]
    accumulated, big = CodebookUsage(k), CodebookUsage(k)
    for batch in batches:
        accumulated.update(batch)
    everything = torch.cat(batches)
    big.update(everything)
    assert torch.equal(accumulated.counts, big.counts)
    assert int(accumulated.counts.sum()) == everything.numel()
    assert_matches(accumulated.compute(), numpy_reference(everything.numpy(), k))
    # One batch of 50 ids cannot show more than 50/K usage; the accumulation shows more.
    single = CodebookUsage(k)
    single.update(batches[0])
    assert float(single.compute()["usage"]) <= 50 / k
    assert float(accumulated.compute()["usage"]) > 0.8


def test_reset_clears_counts() -> None:
    metric = CodebookUsage(5)
    metric.update(torch.tensor([1, 2, 3]))
    metric.reset()
    assert int(metric.counts.sum()) == 0
    metric.update(torch.tensor([4]))
    assert int(metric.compute()["dead_codes"]) == 4


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_accepts_every_integer_dtype(dtype: torch.dtype) -> None:
    metric = CodebookUsage(8)
    metric.update(torch.tensor([0, 1, 1, 7], dtype=dtype))
    assert metric.counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 1]


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (torch.tensor([0.0, 1.0]), "float32"),
        (torch.tensor([True, False]), "bool"),
        (torch.tensor([0, 8]), r"\[0, 8\]"),
        (torch.tensor([-1, 3]), r"\[-1, 3\]"),
    ],
)
def test_bad_ids_raise(ids: torch.Tensor, message: str) -> None:
    metric = CodebookUsage(8)
    with pytest.raises(ValueError, match=message):
        metric.update(ids)
    assert int(metric.counts.sum()) == 0  # a rejected batch leaves the state untouched


def test_not_a_tensor_raises() -> None:
    with pytest.raises(TypeError, match="list"):
        CodebookUsage(8).update([1, 2])


@pytest.mark.parametrize("k", [0, -3, 2.0, True])
def test_bad_codebook_size_raises(k: object) -> None:
    with pytest.raises(ValueError, match="codebook_size"):
        CodebookUsage(k)  # type: ignore[arg-type]


def test_compute_without_ids_raises() -> None:
    metric = CodebookUsage(8)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no code id was counted"):
        metric.compute()
    metric.update(torch.zeros(0, dtype=torch.int64))  # an empty batch counts nothing
    with pytest.raises(ValueError, match="no code id was counted"):
        metric.compute()


@pytest.mark.parametrize(
    "counts", [torch.tensor([1.0, -1.0]), torch.tensor([1.0, float("nan")]), torch.zeros(2, 2)]
)
def test_usage_stats_rejects_bad_counts(counts: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        usage_stats(counts)


def test_usage_stats_accepts_float_counts() -> None:
    ints = usage_stats(torch.tensor([5, 0, 2, 9]))
    floats = usage_stats(torch.tensor([5.0, 0.0, 2.0, 9.0], dtype=torch.float64))
    for name in ints:
        assert torch.equal(ints[name], floats[name]), name
