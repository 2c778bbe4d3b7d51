"""Verdicts with known answers, and the codebook geometry against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.report.synthetic import stats_by_hand
from vqtok.quantizers import FSQ, VectorQuantizer
from vqtok.report.analysis import (
    comparison_notes,
    expected_distinct,
    final_metrics,
    percent,
    verdict,
)
from vqtok.report.codebook import (
    codebook_vectors,
    duplicate_count,
    nearest_other_distances,
    pca_2d,
)


def test_ten_of_k_codes_is_collapsed() -> None:
    counts = np.zeros(1000, dtype=np.int64)
    counts[[3, 50, 99, 120, 400, 401, 402, 600, 800, 999]] = 40
    final = final_metrics(counts, {"step": 7, "epoch": 1, "psnr": 18.5, "ssim": 0.4})
    assert final["usage"] == 10 / 1000
    assert final["used_codes"] == 10 and final["dead_codes"] == 990
    assert final["perplexity"] == pytest.approx(10.0, rel=1e-12)  # uniform over 10 codes
    assert final["total_ids"] == 400 and final["step"] == 7 and final["psnr"] == 18.5
    v = verdict(counts)
    assert v.level == "collapsed"
    assert v.text.startswith("collapsed: 99% of 1,000 codes never used on validation")


def test_uniform_use_is_healthy_with_perplexity_k() -> None:
    k = 4096
    counts = np.full(k, 3, dtype=np.int64)
    final = final_metrics(counts, {})
    assert final["perplexity"] == pytest.approx(k, rel=1e-9)
    assert final["normalized_entropy"] == pytest.approx(1.0, abs=1e-12)
    assert final["usage"] == 1.0 and final["step"] is None
    v = verdict(counts)
    assert v.level == "healthy"
    assert v.text == "healthy: 100% of 4,096 codes used on validation, normalised entropy 1.00"


def test_example_from_the_issue() -> None:
    counts = np.zeros(16384, dtype=np.int64)
    counts[:1147] = 5  # 15,237 dead: 93.0%
    assert verdict(counts).text.startswith(
        "collapsed: 93% of 16,384 codes never used on validation (perplexity 1,147.0)")


def test_partial_and_skewed() -> None:
    half = np.zeros(100, dtype=np.int64)
    half[:50] = 2
    assert verdict(half).level == "partly collapsed"
    skew = np.ones(100, dtype=np.int64)
    skew[0] = 100_000  # every code used, one takes nearly every token
    h = stats_by_hand(skew)["normalized_entropy"]
    assert h < 0.7
    v = verdict(skew)
    assert v.level == "skewed" and f"normalised entropy {h:.2f}" in v.text


def test_small_validation_set_is_judged_on_what_it_can_show() -> None:
    counts = np.zeros(10_000, dtype=np.int64)
    counts[:300] = 1  # 300 tokens, all different codes: usage 3%, but nothing more could show
    v = verdict(counts)
    assert v.level == "healthy"
    assert ("only 300 validation tokens: even equal use of every code would show about 3% of "
            "them") in v.text


def test_512_tokens_of_a_perfect_codebook_are_healthy() -> None:
    # 512 ids drawn from 1,000 equally likely codes: about 401 distinct ones show, which
    # used to read as "partly collapsed" (401 of 512)
    rng = np.random.default_rng(0)
    counts = np.bincount(rng.integers(0, 1000, 512), minlength=1000)
    used = int((counts > 0).sum())
    assert 380 < used < 420
    v = verdict(counts)
    assert v.level == "healthy", v.text
    assert "even equal use of every code would show about 40% of them" in v.text
    # the expectation by hand, for K = 1,000 and N = 512: 1000 (1 - 0.999^512)
    assert expected_distinct(1000, 512) == pytest.approx(1000 * (1 - 0.999**512), rel=1e-12)
    assert expected_distinct(1000, 10**6) == pytest.approx(1000.0)
    assert expected_distinct(10_000, 300) == pytest.approx(10_000 * (1 - (1 - 1e-4) ** 300))


def test_percent() -> None:
    assert percent(0.93) == "93%"
    assert percent(0.9994) == "99.9%"
    assert percent(0.001) == "0.1%"
    assert percent(1.0) == "100%" and percent(0.0) == "0%"


def test_comparison_notes() -> None:
    assert comparison_notes({"a": 64, "b": 64}, same_codebook=True) == []
    notes = comparison_notes({"a": 64, "b": 1000}, same_codebook=False)
    assert len(notes) == 1 and "a: 64, b: 1,000" in notes[0]
    with pytest.raises(ValueError, match=r"different codebook sizes \(a: 64, b: 1,000\)"):
        comparison_notes({"a": 64, "b": 1000}, same_codebook=True)


def brute_force_nn(codes: np.ndarray) -> np.ndarray:
    x = codes.astype(np.float64)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


def test_nearest_other_distances_match_brute_force_with_duplicates() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(300, 6, generator=g)
    codes[5] = codes[200]  # a duplicate pair across blocks
    codes[70] = codes[71]  # and one inside a block
    dist, ids = nearest_other_distances(codes, chunk_rows=64)
    np.testing.assert_array_equal(ids, np.arange(300))
    np.testing.assert_allclose(dist, brute_force_nn(codes.numpy()), rtol=1e-6, atol=0)
    assert dist[[5, 200, 70, 71]].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert duplicate_count(dist, codes) == 4


def test_nearest_other_distances_on_a_subset() -> None:
    codes = torch.randn(200, 3, generator=torch.Generator().manual_seed(1))
    dist, ids = nearest_other_distances(codes, chunk_rows=16, max_queries=40, seed=3)
    assert ids.shape == (40,) and len(set(ids.tolist())) == 40
    np.testing.assert_allclose(dist, brute_force_nn(codes.numpy())[ids], rtol=1e-6)
    with pytest.raises(ValueError, match="at least 2 codes"):
        nearest_other_distances(codes[:1])


def test_pca_of_planar_codes_keeps_distances() -> None:
    g = torch.Generator().manual_seed(2)
    plane = torch.linalg.qr(torch.randn(5, 2, generator=g, dtype=torch.float64))[0]  # (5, 2)
    flat = torch.randn(100, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0])
    codes = flat @ plane.T + 4.0  # (100, 5) on a shifted 2-D plane
    xy = pca_2d(codes)
    def dist(a: np.ndarray) -> np.ndarray:
        return np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))

    np.testing.assert_allclose(dist(xy), dist(codes.numpy()), atol=1e-9)
    assert xy[:, 0].var() > xy[:, 1].var()  # leading axis first
    np.testing.assert_allclose(xy.mean(axis=0), 0.0, atol=1e-12)
    one_d = pca_2d(torch.arange(4.0)[:, None])
    np.testing.assert_allclose(one_d, [[-1.5, 0], [-0.5, 0], [0.5, 0], [1.5, 0]])


def test_codebook_vectors_fsq_grid_in_index_order() -> None:
    quantizer = FSQ([3, 3])  # dim == len(levels): no projection, codes are the grid
    codes = codebook_vectors(quantizer, chunk=4).numpy()
    # docs/algorithms.md#fsq: index = digit_0 + 3 digit_1, value = digit - 1 for L = 3
    grid = [[d0 - 1.0, d1 - 1.0] for d1 in range(3) for d0 in range(3)]
    np.testing.assert_array_equal(codes, grid)


def test_codebook_vectors_vq_are_its_codebook() -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(70, 4, init="normal")
    codes = codebook_vectors(quantizer, chunk=32)
    assert codes.shape == (70, 4)
    torch.testing.assert_close(codes, quantizer.codebook.detach(), rtol=0, atol=0)
    assert math.isfinite(float(codes.sum()))
