"""Samplers in sigma (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models"), kept apart from the network.

A denoiser is any callable `denoise(x, sigma) -> D(x; sigma)`: the clean image it expects
behind x = y + sigma * n (one float sigma for the batch). In this form the probability-flow
ODE is dx/dsigma = (x - D(x; sigma)) / sigma, and the sampler starts from sigma_max * z.

- "heun": EDM's Algorithm 2, 2nd order; with `churn` > 0 its stochastic version (noise added
  back before each step, S_churn / S_tmin / S_tmax / S_noise); `steps` noise levels take
  2 * steps - 1 evaluations (the step to sigma = 0 is Euler's).
- "euler": the same steps, first order, one evaluation each.
- "dpm-solver++": DPM-Solver++(2M) (Lu et al. 2022) in sigma, i.e. with alpha = 1 and
  lambda = -log(sigma); one evaluation per step.
`heun_invert` runs Heun backwards: an image to the z that deterministic Heun maps back to it.

The initial noise z and then every churn step's noise are drawn from the per-image generators
in this fixed order (`samplers.randn`), so image i depends on its own seed alone.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from animegen.diffusion.samplers import randn

SAMPLERS = ("heun", "euler", "dpm-solver++")

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> list[float]:
    """`steps` noise levels from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho)
    (EDM eq. 5), then 0. One step goes from sigma_max straight to 0."""
    if steps == 1:
        return [sigma_max, 0.0]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + i / (steps - 1) * (lo - hi)) ** rho for i in range(steps)] + [0.0]


def nfe(sampler: str, steps: int) -> int:
    """Denoiser evaluations of `steps` noise levels."""
    return 2 * steps - 1 if sampler == "heun" else steps


@torch.no_grad()
def sample(denoise: Denoiser, z: torch.Tensor, sigmas: list[float], sampler: str = "heun", churn: float = 0.0,
           s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
           generator: list[torch.Generator] | torch.Generator | None = None) -> torch.Tensor:
    """Images from standard-normal `z` through the noise levels `sigmas` (karras_sigmas).
    The churn settings are Heun's alone (EDM Algorithm 2); `generator` draws their noise."""
    x = z * sigmas[0]
    if sampler == "dpm-solver++":
        return _dpm_solver_pp_2m(denoise, x, sigmas)
    steps = len(sigmas) - 1
    for sigma, sigma_next in zip(sigmas, sigmas[1:]):
        gamma = min(churn / steps, math.sqrt(2) - 1) if churn > 0 and s_tmin <= sigma <= s_tmax else 0.0
        if gamma > 0:  # raise the noise level to sigma_hat by adding fresh noise
            sigma_hat = sigma * (1 + gamma)
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * randn(x.shape, generator, x.device, x.dtype)
            sigma = sigma_hat
        d = (x - denoise(x, sigma)) / sigma
        x_next = x + (sigma_next - sigma) * d
        if sampler == "heun" and sigma_next > 0:  # the trapezoid rule's correction
            d_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * (d + d_next) / 2
        x = x_next
    return x


def _dpm_solver_pp_2m(denoise: Denoiser, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """Multistep 2nd order on the data prediction, with h = log(sigma / sigma_next): the first
    step first order (no history yet); the last, to sigma = 0, is the data prediction itself."""
    previous = None  # (data prediction, step h) of the step before
    for sigma, sigma_next in zip(sigmas, sigmas[1:]):
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            return denoised
        h = math.log(sigma / sigma_next)
        d = denoised
        if previous is not None:
            denoised_prev, h_prev = previous
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * denoised_prev
        x = sigma_next / sigma * x - math.expm1(-h) * d
        previous = (denoised, h)
    return x


@torch.no_grad()
def heun_invert(denoise: Denoiser, images: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """The z from which deterministic Heun over `sigmas` returns (nearly) to `images`: the ODE
    integrated upwards with the same levels and 2 * steps - 1 evaluations. Sampling's last
    (Euler) step maps x at sigma_min to D(x; sigma_min); its inverse x = image + (image -
    D(image; sigma_min)) is one fixed-point step of that map, exact where D is locally a
    shift. Each Heun step up is the trapezoid rule run the other way (error O(h^3) a step)."""
    levels = sigmas[:-1]  # without the final 0
    x = images + (images - denoise(images, levels[-1]))
    for sigma, sigma_up in zip(reversed(levels[1:]), reversed(levels[:-1])):
        d = (x - denoise(x, sigma)) / sigma
        x_up = x + (sigma_up - sigma) * d
        d_up = (x_up - denoise(x_up, sigma_up)) / sigma_up
        x = x + (sigma_up - sigma) * (d + d_up) / 2
    return x / levels[0]
