"""The Fréchet distance against independent float64 computations: scipy's general matrix
square root (``scipy.linalg.sqrtm`` of the non-symmetric product, as pytorch-fid computes
it) and numpy's eigenvalues of that product; the sums-of-statistics moments against numpy's
two-pass mean and covariance."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from vqtok.metrics.frechet import (
    FeatureMoments,
    FrechetDistance,
    frechet_distance,
    moments_from_sums,
    trace_sqrt_product,
)


def scipy_frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Heusel et al.'s formula with scipy's matrix square root of S1 S2 (float64)."""
    root = scipy.linalg.sqrtm(s1 @ s2)
    root = root.real if np.iscomplexobj(root) else root
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


def eigen_frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """The same with tr((S1 S2)^(1/2)) as the sum of the square roots of the (real,
    non-negative up to rounding) eigenvalues of the non-symmetric product S1 S2."""
    values = np.linalg.eigvals(s1 @ s2).real.clip(min=0)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(values).sum())


def features(n: int, d: int, seed: int, rank: int | None = None) -> np.ndarray:
    """``n`` correlated, non-negative-mean feature vectors of dimension ``d``, lying in a
    ``rank``-dimensional affine subspace when ``rank`` is given."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank or d, d))
    return rng.normal(size=(n, rank or d)) @ basis * 0.3 + rng.uniform(0.2, 1.0, size=d)


def moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("d", [3, 16, 64])
def test_full_rank_equals_scipy_sqrtm(d: int) -> None:
    mu1, s1 = moments(features(4 * d, d, seed=d))
    mu2, s2 = moments(features(4 * d, d, seed=d + 1) * 1.3)
    ours = float(frechet_distance(*map(torch.from_numpy, (mu1, s1, mu2, s2))))
    assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)
    assert ours == pytest.approx(eigen_frechet(mu1, s1, mu2, s2), rel=1e-6)


@pytest.mark.parametrize(("n", "d", "rank"), [(25, 64, None), (200, 48, 10)])
def test_rank_deficient_covariances(n: int, d: int, rank: int | None) -> None:
    """Fewer samples than dimensions (rank n - 1, what 25 images give in 2,048 Inception
    dimensions), and features confined to a subspace: both covariances are singular."""
    mu1, s1 = moments(features(n, d, seed=1, rank=rank))
    mu2, s2 = moments(features(n, d, seed=2, rank=rank) + 0.1)
    assert np.linalg.matrix_rank(s1) < d and np.linalg.matrix_rank(s2) < d
    ours = float(frechet_distance(*map(torch.from_numpy, (mu1, s1, mu2, s2))))
    assert ours == pytest.approx(eigen_frechet(mu1, s1, mu2, s2), rel=1e-6)
    assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)


def test_identical_sets_are_at_distance_zero_and_the_trace_root_is_symmetric() -> None:
    mu, s = moments(features(40, 32, seed=5))
    sigma = torch.from_numpy(s)
    assert abs(float(frechet_distance(torch.from_numpy(mu), sigma, torch.from_numpy(mu),
                                      sigma))) < 1e-9 * float(torch.trace(sigma))
    _, s2 = moments(features(40, 32, seed=6))
    other = torch.from_numpy(s2)
    # tr((S1 S2)^1/2) = tr((S2 S1)^1/2): the eigenvalues of a product do not depend on order
    assert float(trace_sqrt_product(sigma, other)) == pytest.approx(
        float(trace_sqrt_product(other, sigma)), rel=1e-9)


def test_moments_from_sums_equal_the_two_pass_form() -> None:
    x = features(300, 20, seed=3)
    metric = FeatureMoments(20)
    for chunk in np.array_split(x, 7):  # unequal batches
        metric.update(torch.from_numpy(chunk))
    mu, sigma = metric.compute()
    ref_mu, ref_sigma = moments(x)
    np.testing.assert_allclose(mu.numpy(), ref_mu, rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), ref_sigma, rtol=1e-9, atol=1e-12 * np.abs(
        ref_sigma).max())
    assert int(metric.count) == 300


def test_states_add_like_one_pass_over_all_features() -> None:
    """Two metrics fed halves, their states summed (what the sum reduction across processes
    does), give the distance of one metric fed everything."""
    real, fake = features(90, 12, seed=7), features(90, 12, seed=8) * 0.8
    whole = FrechetDistance(12)
    whole.update(torch.from_numpy(real), real=True)
    whole.update(torch.from_numpy(fake), real=False)
    halves = [FrechetDistance(12), FrechetDistance(12)]
    for part, rows in zip(halves, (slice(0, 31), slice(31, 90))):
        part.update(torch.from_numpy(real[rows]), real=True)
        part.update(torch.from_numpy(fake[rows]), real=False)
    merged = FrechetDistance(12)
    for side in ("real", "fake"):
        for state in ("total", "outer", "count"):
            setattr(getattr(merged, side), state, sum(getattr(getattr(h, side), state)
                                                      for h in halves))
        getattr(merged, side)._update_count = 1
    merged._update_count = 1
    assert float(merged.compute()) == pytest.approx(float(whole.compute()), rel=1e-12)
    assert float(whole.compute()) == pytest.approx(scipy_frechet(*moments(real), *moments(fake)),
                                                   rel=1e-6)


def test_fixed_reference_statistics() -> None:
    real, fake = features(50, 8, seed=9), features(60, 8, seed=10)
    mu, sigma = moments(real)
    fd = FrechetDistance(8, reference=(torch.from_numpy(mu), torch.from_numpy(sigma)))
    fd.update(torch.from_numpy(fake), real=False)
    assert float(fd.compute()) == pytest.approx(scipy_frechet(mu, sigma, *moments(fake)),
                                                rel=1e-6)
    with pytest.raises(ValueError, match="real=False only"):
        fd.update(torch.from_numpy(real), real=True)
    with pytest.raises(ValueError, match=r"reference statistics must be mu \(8,\)"):
        FrechetDistance(8, reference=(torch.zeros(7), torch.eye(7)))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        moments_from_sums(torch.ones(3), torch.ones(3, 3), 1)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        FeatureMoments(4).update(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="mu2 of shape"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))
