"""The seed plane of NVIDIA's visualizer: a point (x, y) blends the latents of the four seeds
at the integer corners around it, bilinearly. Seed (i, j) is i + STEP * j, so the plane
holds every seed. StyleGAN blends W; other families blend z.
"""

from __future__ import annotations

import math

import torch

from animegen.errors import UserError
from animegen.latent.directions import edit_space
from animegen.models.base import Latents, Model, Noise
from animegen.settings import MAX_SEED

STEP = 100  # seeds per row of the plane, as NVIDIA's visualizer
MAX_COORDINATE = 10**6


def check_point(x: float, y: float) -> tuple[float, float]:
    if not all(0 <= v <= MAX_COORDINATE for v in (x, y)):  # also refuses NaN
        raise UserError(f"seed plane point ({x}, {y}): both coordinates must be in [0, {MAX_COORDINATE}].")
    return float(x), float(y)


def corners(x: float, y: float) -> list[tuple[int, float]]:
    """(seed, weight) of the four corners around (x, y); the weights sum to 1."""
    x, y = check_point(x, y)
    i, j = math.floor(x), math.floor(y)
    out = []
    for di, dj in ((0, 0), (1, 0), (0, 1), (1, 1)):
        weight = (1 - abs(x - (i + di))) * (1 - abs(y - (j + dj)))
        out.append((((i + di) + STEP * (j + dj)) % (MAX_SEED + 1), weight))
    return out


def plane_latents(model: Model, x: float, y: float, options: dict) -> tuple[int, Latents]:
    """The seed whose stream draws the rest (the corner below-left of the point) and the
    blended latent, as `given` latents for it."""
    space = edit_space(model)
    points = corners(x, y)
    seeds = [seed for seed, _ in points]
    with torch.no_grad():
        drawn = model.draw(Noise(seeds, model.device), **options)[space]
    weights = torch.tensor([w for _, w in points], dtype=drawn.dtype, device=drawn.device)
    blended = (weights.reshape(-1, *[1] * (drawn.ndim - 1)) * drawn).sum(0, keepdim=True)
    return seeds[0], {space: blended}
