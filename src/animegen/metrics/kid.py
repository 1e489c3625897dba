"""Kernel Inception Distance (Bińkowski et al. 2018): the squared MMD between two sets of
Inception features under the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, estimated
without bias on `num_subsets` random subsets of min(n_a, n_b, max_subset_size) images per
side (the protocol of the paper, StyleGAN's metrics and clean-fid: 100 subsets of at most
1,000). Reported x 10^3 with the standard deviation over subsets, in float64.
"""

from __future__ import annotations

import numpy as np

from animegen.errors import UserError

SCALE = 1e3  # KID is reported x 10^3


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    k = x @ y.T / x.shape[1] + 1
    return k * k * k  # twice as fast as ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples: within-set means leave out k(x_i, x_i)."""
    m = len(x)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.mean())


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, num_subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) over subsets of the unbiased MMD^2, unscaled; the subsets come from `seed`."""
    m = min(len(a), len(b), max_subset_size)
    if m < 2:
        raise UserError(f"KID needs at least 2 images per set, got {len(a)} and {len(b)}.")
    rng = np.random.default_rng(seed)
    a, b = a.astype(np.float64), b.astype(np.float64)
    estimates = [mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
                 for _ in range(num_subsets)]
    return float(np.mean(estimates)), float(np.std(estimates))


def kid(real: np.ndarray, generated: np.ndarray) -> dict:
    mean, std = kernel_inception_distance(real, generated)
    return {"kid": mean * SCALE, "kid_std": std * SCALE}
