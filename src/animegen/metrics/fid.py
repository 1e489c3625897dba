"""Fréchet Inception Distance (Heusel et al. 2017) between two sets of Inception features:

    FID = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))

with means mu and covariances S (denominator n - 1), all in float64 from the exact
float32 features. The last trace is computed without forming a matrix square root:
writing S = F^T F (F = centred features / sqrt(n - 1)), the eigenvalues of S_a S_b are
the squared singular values of F_a F_b^T, so tr((S_a S_b)^(1/2)) is the sum of those
singular values. An SVD is backward stable and never meets the complex round-off or
singular-matrix fallbacks of `scipy.linalg.sqrtm`, whose trace it matches to better than
1e-6 relative (tests/test_metrics.py). When a set has more images than feature dimensions, F is
first reduced to the R of its QR decomposition (R^T R = F^T F), so the cost is bounded.
"""

from __future__ import annotations

import numpy as np

from animegen.errors import UserError


def covariance_factor(features: np.ndarray) -> np.ndarray:
    """F with F^T F = the covariance of `features` (rows are samples), at most d x d."""
    n, d = features.shape
    if n < 2:
        raise UserError(f"FID needs at least 2 images per set, got {n}.")
    centred = (features.astype(np.float64) - features.mean(0, dtype=np.float64)) / np.sqrt(n - 1)
    return centred if n <= d else np.linalg.qr(centred, mode="r")


def trace_sqrt_product(factor_a: np.ndarray, factor_b: np.ndarray) -> float:
    """tr((S_a S_b)^(1/2)) for S = F^T F: the nuclear norm of F_a F_b^T."""
    return float(np.linalg.svd(factor_a @ factor_b.T, compute_uv=False).sum())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    fa, fb = covariance_factor(a), covariance_factor(b)
    mean_term = np.square(a.mean(0, dtype=np.float64) - b.mean(0, dtype=np.float64)).sum()
    return float(mean_term + np.square(fa).sum() + np.square(fb).sum() - 2 * trace_sqrt_product(fa, fb))


def fid(real: np.ndarray, generated: np.ndarray) -> dict:
    return {"fid": frechet_distance(real, generated)}
