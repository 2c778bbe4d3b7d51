"""The Fréchet distance between two sets of feature vectors (docs/eval.md#the-frechet-distance).

Heusel et al. 2017 ("GANs trained by a two time-scale update rule converge to a local Nash
equilibrium", eq. 6): with the means and covariances of two Gaussians,

    d^2 = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2)).

State, in float64 and summed across processes: per set the feature sum ``s1 = sum x``,
the sum of outer products ``s2 = sum x x^T`` and the count ``n``. Then ``mu = s1 / n`` and
``S = (s2 - n mu mu^T) / (n - 1)``, the unbiased covariance that ``numpy.cov`` gives. The
sums form loses digits when the features' mean is large against their spread
(``s2`` and ``n mu mu^T`` nearly cancel); for Inception's pooled features (non-negative,
mean and spread of the same order) float64 keeps about 15 - 2 digits, far below what
the distance is reported to.

The matrix square root (:func:`trace_sqrt_product`): ``tr((S_1 S_2)^(1/2))`` equals
``tr((R S_2 R)^(1/2))`` with ``R = S_1^(1/2)``, because ``S_1 S_2 = R (R S_2)`` and
``R S_2 R = (R S_2) R`` have the same eigenvalues. ``R`` comes from the symmetric
eigendecomposition of ``S_1`` (negative rounding noise clipped to 0), and ``R S_2 R`` is
symmetric and positive semi-definite, so its trace root is the sum of the square roots of
its eigenvalues, again from a symmetric eigendecomposition. Unlike a general matrix square
root of the non-symmetric ``S_1 S_2`` (``scipy.linalg.sqrtm``, which pytorch-fid and
torch-fidelity use), this needs no complex arithmetic and stays exact when a covariance is
singular: fewer samples than feature dimensions (25 images, 2,048 features) give rank
n - 1.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from vqtok.validation import check_positive


def moments_from_sums(total: Tensor, outer: Tensor, count: int | Tensor) -> tuple[Tensor, Tensor]:
    """``(mu (D,), sigma (D, D))`` in float64 from ``total = sum x``, ``outer = sum x x^T``
    and the number of vectors ``count`` (at least 2: one vector has no covariance)."""
    n = int(count)
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {n}")
    total, outer = total.to(torch.float64), outer.to(torch.float64)
    mu = total / n
    sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
    return mu, (sigma + sigma.T) / 2  # exactly symmetric (the sums are, up to rounding)


def _sqrt_psd(matrix: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix; eigenvalues
    below 0 (rounding noise of a singular matrix) count as 0."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def trace_sqrt_product(sigma1: Tensor, sigma2: Tensor) -> Tensor:
    """``tr((sigma1 sigma2)^(1/2))`` of two covariance matrices, in float64, through the
    symmetric form ``tr((R sigma2 R)^(1/2))`` with ``R = sigma1^(1/2)`` (module doc)."""
    root = _sqrt_psd(sigma1.to(torch.float64))
    inner = root @ sigma2.to(torch.float64) @ root
    values = torch.linalg.eigvalsh((inner + inner.T) / 2)
    return values.clamp(min=0).sqrt().sum()


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """The squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), a float64
    scalar (module doc); what FID reports. Shapes ``(D,)`` and ``(D, D)``."""
    d = mu1.shape[-1]
    for name, mu, sigma in (("1", mu1, sigma1), ("2", mu2, sigma2)):
        if mu.shape != (d,) or sigma.shape != (d, d):
            raise ValueError(f"expected mu{name} of shape ({d},) and sigma{name} of shape "
                             f"({d}, {d}), got {tuple(mu.shape)} and {tuple(sigma.shape)}")
    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    sigma1, sigma2 = sigma1.to(torch.float64), sigma2.to(torch.float64)
    diff = mu1 - mu2
    return (diff @ diff + torch.trace(sigma1) + torch.trace(sigma2)
            - 2 * trace_sqrt_product(sigma1, sigma2))


class FeatureMoments(Metric):
    """The mean and covariance of feature vectors, from float64 sums that add across
    processes (module doc). ``update(features (N, D))``; ``compute() -> (mu, sigma)``."""

    is_differentiable = False
    full_state_update = False

    total: Tensor
    outer: Tensor
    count: Tensor

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(**kwargs)
        check_positive(num_features=num_features)
        self.num_features = num_features
        self.add_state("total", torch.zeros(num_features, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("outer", torch.zeros(num_features, num_features, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, features: Tensor) -> None:
        """Add feature vectors ``(N, D)`` (any float dtype; summed in float64)."""
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected features of shape (N, {self.num_features}), got "
                             f"{tuple(features.shape)}")
        x = features.detach().to(self.total.device, torch.float64)
        self.total += x.sum(dim=0)
        self.outer += x.T @ x
        self.count += x.shape[0]

    def compute(self) -> tuple[Tensor, Tensor]:
        return moments_from_sums(self.total, self.outer, self.count)


class FrechetDistance(Metric):
    """The Fréchet distance between the features of reference images (``real=True``) and
    of generated or reconstructed ones (``real=False``), from :class:`FeatureMoments` of
    each; with ``reference=(mu, sigma)`` the reference side is those fixed statistics
    instead (a statistics file) and ``real=True`` updates are refused.

    Example:
        >>> fd = FrechetDistance(num_features=2)
        >>> fd.update(torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]), real=True)
        >>> fd.update(torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]), real=False)
        >>> abs(float(fd.compute())) < 1e-12
        True
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, num_features: int, reference: tuple[Tensor, Tensor] | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.real = FeatureMoments(num_features, **kwargs)
        self.fake = FeatureMoments(num_features, **kwargs)
        self.reference = None
        if reference is not None:
            mu, sigma = (torch.as_tensor(t, dtype=torch.float64) for t in reference)
            if mu.shape != (num_features,) or sigma.shape != (num_features, num_features):
                raise ValueError(f"reference statistics must be mu ({num_features},) and sigma "
                                 f"({num_features}, {num_features}), got {tuple(mu.shape)} and "
                                 f"{tuple(sigma.shape)}")
            self.reference = (mu, sigma)

    def update(self, features: Tensor, real: bool) -> None:
        """Add ``(N, D)`` features of reference images (``real``) or of the others."""
        if real and self.reference is not None:
            raise ValueError("this FrechetDistance compares with fixed reference statistics; "
                             "update it with real=False only")
        (self.real if real else self.fake).update(features)

    def reference_moments(self) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)`` of the reference side: the fixed statistics, or those of the
        features given with ``real=True``."""
        return self.reference if self.reference is not None else self.real.compute()

    def compute(self) -> Tensor:
        mu1, sigma1 = self.reference_moments()
        mu2, sigma2 = self.fake.compute()
        return frechet_distance(mu1.to(mu2.device), sigma1.to(mu2.device), mu2, sigma2)

    def reset(self) -> None:
        super().reset()
        self.real.reset()
        self.fake.reset()
