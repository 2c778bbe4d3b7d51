"""Reference statistics for the Fréchet distance: an ``.npz`` holding ``mu`` ``(D,)`` and
``sigma`` ``(D, D)`` (float), the layout of pytorch-fid's and ADM's reference files
(docs/formats.md#fid-statistics). Other members (ADM's files also hold the images as
``arr_0`` and spatial statistics) are left unread."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vqtok.formats.npzfile import read_npz, write_npz

WHAT = "FID statistics file"


def read_fid_stats(path: str | os.PathLike[str], num_features: int) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """``(mu, sigma)`` in float64 from the ``.npz`` at ``path``; a missing file, missing
    members, other shapes (``num_features`` features expected), non-finite values or an
    asymmetric ``sigma`` raise a one-line ValueError naming the file."""
    arrays = read_npz(path, WHAT, error=ValueError, only=("mu", "sigma"))
    missing = sorted({"mu", "sigma"} - set(arrays))
    if missing:
        raise ValueError(f"{path}: not an {WHAT}: no {' or '.join(missing)} (expected mu "
                         f"({num_features},) and sigma ({num_features}, {num_features}))")
    mu, sigma = arrays["mu"], arrays["sigma"]
    d = num_features
    if mu.shape != (d,) or sigma.shape != (d, d) or mu.dtype.kind != "f" or (
            sigma.dtype.kind != "f"):
        raise ValueError(f"{path}: mu must be floats of shape ({d},) and sigma of shape ({d}, "
                         f"{d}) for these {d} features, got mu {mu.dtype} {mu.shape} and sigma "
                         f"{sigma.dtype} {sigma.shape}")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path}: mu or sigma holds NaN or infinite values")
    if not np.allclose(sigma, sigma.T, rtol=1e-5, atol=1e-8 * max(1.0, np.abs(sigma).max())):
        raise ValueError(f"{path}: sigma is not symmetric, so not a covariance matrix")
    return mu, sigma


def write_fid_stats(path: str | os.PathLike[str], mu: np.ndarray, sigma: np.ndarray) -> Path:
    """Write ``mu`` and ``sigma`` (float64) to the ``.npz`` ``path``, atomically."""
    return write_npz(path, {"mu": np.asarray(mu, np.float64),
                            "sigma": np.asarray(sigma, np.float64)})
