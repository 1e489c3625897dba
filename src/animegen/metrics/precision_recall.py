"""Improved precision and recall (Kynkäänniemi et al. 2019), k = 3.

Each set's manifold is the union of balls around its points, each ball reaching the
point's k-th nearest neighbour within the set. Precision is the share of generated
points inside the real manifold (fidelity); recall, the share of real points inside the
generated manifold (coverage). The paper embeds images with VGG16; we use the same
Inception features as FID and KID, so the values are not interchangeable with the
paper's (nor with StyleGAN's metrics, which follow it).
"""

from __future__ import annotations

import numpy as np

from animegen.errors import UserError

K = 3
ROWS = 1024  # rows of a distance block: bounds memory at ROWS x n float64


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of x and of y (float64)."""
    return np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T, 0)


def kth_neighbour_radii(x: np.ndarray, k: int = K) -> np.ndarray:
    """Squared distance from each row to its k-th nearest other row (itself is the 0th)."""
    return np.concatenate([np.partition(squared_distances(x[i : i + ROWS], x), k, axis=1)[:, k]
                           for i in range(0, len(x), ROWS)])


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = K) -> dict:
    if min(len(real), len(generated)) <= k:
        raise UserError(f"precision/recall with k={k} need more than {k} images per set, "
                        f"got {len(real)} and {len(generated)}.")
    real, generated = real.astype(np.float64), generated.astype(np.float64)
    real_radii, generated_radii = kth_neighbour_radii(real, k), kth_neighbour_radii(generated, k)
    in_real = np.zeros(len(generated), bool)
    in_generated = np.zeros(len(real), bool)
    for i in range(0, len(generated), ROWS):
        d = squared_distances(generated[i : i + ROWS], real)
        in_real[i : i + ROWS] = (d <= real_radii[None, :]).any(1)
        in_generated |= (d <= generated_radii[i : i + ROWS, None]).any(0)
    return {"precision": float(in_real.mean()), "recall": float(in_generated.mean())}
