"""Samplers for a discrete-time diffusion model, kept apart from the network.

A denoiser is any callable `denoiser(x_t, t) -> model_output` with t a long tensor of shape (B,);
its output is read as eps- or v-prediction through the NoiseSchedule.

- "ddpm": ancestral sampling over all T steps, posterior variance beta_tilde (Ho et al. 2020).
- "ddim": any number of steps, eta in [0, 1]; eta = 1 with all steps is ancestral DDPM (Song et al. 2021).
- "dpm-solver++": DPM-Solver++(2M), multistep second order on the data prediction (Lu et al. 2022).
`ddim_invert` runs DDIM (eta = 0) backwards: an image to the initial noise that DDIM maps back to it.

Reproducibility: the initial noise and then every stochastic step's noise are drawn from `generator`
in this fixed order, on the generator's device, and moved to `device`; a seeded CPU generator therefore
gives the same noise on any device, and the same images wherever the denoiser itself is deterministic.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch

from animegen.diffusion.schedule import NoiseSchedule, check_prediction
from animegen.errors import UserError

SAMPLERS = ("ddpm", "ddim", "dpm-solver++")
DETERMINISTIC_SAMPLERS = ("ddim", "dpm-solver++")  # with eta 0: x_0 is a function of x_T alone

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def timesteps(num_train_steps: int, steps: int) -> list[int]:
    """`steps` decreasing timesteps, "trailing" spacing: the first is always T-1 (pure noise, as in
    training) and the spacing T/steps is kept down to the end; each sampler then takes one last step
    from the smallest of them to clean data. With steps = T these are T-1, ..., 0. (Leading spacing
    would start below T-1 and so never see the noise level the samples actually start at, which
    hurts at few steps; Lin et al. 2024.)"""
    return [num_train_steps * (steps - i) // steps - 1 for i in range(steps)]


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    prediction: str = "eps",
    clip_x0: bool = True,
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw samples of `shape` (batch first). `steps`: number of denoiser calls, default all T
    (ancestral DDPM always takes all T). `generator`: one for the batch, or one per sample, so that
    sample i depends on its own seed only, whatever batch it is drawn in. `clip_x0` clamps every x0
    prediction to [-1, 1], for images. `x_T`: the initial noise, when drawn already (from
    `generator`, which has then advanced past it)."""
    steps = schedule.num_steps if steps is None else steps
    _check_request(schedule, sampler, steps, eta, prediction)
    if isinstance(generator, (list, tuple)) and len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}.")
    x = randn(shape, generator, device, dtype) if x_T is None else x_T.to(device, dtype)
    predict = partial(_predict, denoiser, schedule, prediction, clip_x0)
    if sampler == "ddpm":
        return _ddpm(predict, schedule, x, generator)
    ts = timesteps(schedule.num_steps, steps)
    # (alpha, sigma) at each timestep, then at the clean end point.
    levels = [(schedule.alpha(t).item(), schedule.sigma(t).item()) for t in ts] + [(1.0, 0.0)]
    if sampler == "ddim":
        return _ddim(predict, ts, levels, x, eta, generator)
    return _dpm_solver_pp_2m(predict, ts, levels, x)


@torch.no_grad()
def ddim_invert(denoiser: Denoiser, schedule: NoiseSchedule, x0: torch.Tensor, steps: int,
                prediction: str = "eps") -> torch.Tensor:
    """The initial noise x_T from which DDIM with eta = 0 over the same `steps` timesteps
    (`timesteps`) returns to `x0`: the sampler's updates run backwards, from clean data up to
    T-1, each step's eps predicted at the point it starts from (the usual approximation
    eps(x_t) ~ eps(x_{t-1}) of Song et al. 2021). Nothing is clipped on the way up."""
    _check_request(schedule, "ddim", steps, 0.0, prediction)
    ts = timesteps(schedule.num_steps, steps)
    levels = [(schedule.alpha(t).item(), schedule.sigma(t).item()) for t in ts] + [(1.0, 0.0)]
    x = x0
    for t, (alpha, sigma), (alpha_below, sigma_below) in reversed(list(zip(ts, levels, levels[1:]))):
        model_output = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).to(x.dtype)
        _, eps = schedule.predict_x0_eps(model_output, x, torch.tensor(t), prediction)
        clean = (x - sigma_below * eps) / alpha_below
        x = alpha * clean + sigma * eps
    return x


def _check_request(schedule: NoiseSchedule, sampler: str, steps: int, eta: float, prediction: str) -> None:
    check_prediction(prediction)
    if sampler not in SAMPLERS:
        raise UserError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    if not 1 <= steps <= schedule.num_steps:
        raise UserError(f"Sampling steps must be between 1 and {schedule.num_steps}, not {steps}.")
    if sampler == "ddpm" and steps != schedule.num_steps:
        raise UserError(f"Ancestral DDPM takes all {schedule.num_steps} steps; use ddim or dpm-solver++ for {steps}.")
    if sampler != "ddim" and eta != 0:
        raise UserError(f"eta applies to the ddim sampler only, not to {sampler}.")
    if not 0 <= eta <= 1:
        raise UserError(f"DDIM eta must be between 0 and 1, not {eta}.")


def randn(shape, generator, device, dtype: torch.dtype) -> torch.Tensor:
    """Noise of `shape`, drawn on the generator's device and moved to `device`; with a list of
    generators (one per sample), sample i's noise comes from generator i alone."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([randn(shape[1:], g, device, dtype) for g in generator])
    draw_on = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_on, dtype=dtype).to(device)


def _predict(denoiser: Denoiser, schedule: NoiseSchedule, prediction: str, clip_x0: bool, x: torch.Tensor, t: int):
    """(x0, eps) predicted at x = x_t; a clipped x0 comes with the eps that keeps the pair consistent with x_t."""
    model_output = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).to(x.dtype)
    t_scalar = torch.tensor(t)  # one timestep for the whole batch: scalar coefficients
    x0, eps = schedule.predict_x0_eps(model_output, x, t_scalar, prediction)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = schedule.eps_from_x0(x0, x, t_scalar)
    return x0, eps


def _ddpm(predict, schedule: NoiseSchedule, x: torch.Tensor, generator) -> torch.Tensor:
    """x_{t-1} ~ q(x_{t-1} | x_t, x0 = predicted x0), the Gaussian posterior with variance beta_tilde."""
    alphas_cumprod, betas = schedule.alphas_cumprod.tolist(), schedule.betas.tolist()
    for t in reversed(range(schedule.num_steps)):
        x0, _ = predict(x, t)
        alpha_bar, beta = alphas_cumprod[t], betas[t]
        alpha_bar_prev = alphas_cumprod[t - 1] if t > 0 else 1.0
        x = (math.sqrt(alpha_bar_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - alpha_bar_prev) * x) / (1 - alpha_bar)
        if t > 0:
            posterior_std = math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * beta)
            x = x + posterior_std * randn(x.shape, generator, x.device, x.dtype)
    return x


def _ddim(predict, ts: list[int], levels, x: torch.Tensor, eta: float, generator) -> torch.Tensor:
    """x_next = alpha_next x0 + sqrt(sigma_next^2 - s^2) eps + s z, with s = eta times the DDPM posterior std."""
    for t, (alpha, sigma), (alpha_next, sigma_next) in zip(ts, levels, levels[1:]):
        x0, eps = predict(x, t)
        noise_std = eta * sigma_next / sigma * math.sqrt(1 - (alpha / alpha_next) ** 2)
        x = alpha_next * x0 + math.sqrt(max(sigma_next**2 - noise_std**2, 0.0)) * eps
        if noise_std > 0:
            x = x + noise_std * randn(x.shape, generator, x.device, x.dtype)
    return x


def _dpm_solver_pp_2m(predict, ts: list[int], levels, x: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(2M) in lambda = log(alpha / sigma): first step first order (no history yet), then
    a second-order correction from the previous data prediction; the final step to clean data is first
    order (its lambda step is infinite), as the paper recommends for the last steps anyway."""
    previous = None  # (x0 prediction, lambda step) of the step before
    for t, (alpha, sigma), (alpha_next, sigma_next) in zip(ts[:-1], levels, levels[1:]):
        x0, _ = predict(x, t)
        h = math.log(alpha_next / sigma_next) - math.log(alpha / sigma)
        d = x0
        if previous is not None:
            x0_prev, h_prev = previous
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        x = sigma_next / sigma * x - alpha_next * math.expm1(-h) * d
        previous = (x0, h)
    return predict(x, ts[-1])[0]
