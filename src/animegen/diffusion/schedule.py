"""Discrete-time variance-preserving noise schedules (DDPM) and the conversions between what a
network predicts (eps or v) and what training and sampling need (x0, eps).

Conventions: timesteps t = 0 .. T-1; alpha_bar[t] = prod_{s <= t} (1 - beta[s]);
x_t = alpha(t) x0 + sigma(t) eps with alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar);
v = alpha eps - sigma x0 (Salimans & Ho 2022).
"""

from __future__ import annotations

import math

import torch

from animegen.errors import UserError

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")


def linear_beta_range(num_steps: int) -> tuple[float, float]:
    """DDPM's first and last beta, 1e-4 .. 0.02, tuned for T = 1000; other T are rescaled so the
    total noise stays about the same (as in improved DDPM)."""
    scale = 1000 / num_steps
    return scale * 1e-4, scale * 0.02


def linear_betas(num_steps: int) -> torch.Tensor:
    return torch.linspace(*linear_beta_range(num_steps), num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule; betas are clipped at 0.999 because the last one is 1."""
    s = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((s + offset) / (1 + offset) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=max_beta)


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise UserError(f"Unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}.")


class NoiseSchedule:
    """T noise levels. `betas` and `alphas_cumprod` are float64 CPU tensors; the batch helpers take
    integer timesteps t (a tensor on any device, shape () or (B,)) and return x's dtype and device."""

    def __init__(self, kind: str = "linear", num_steps: int = 1000):
        if kind not in SCHEDULES:
            raise UserError(f"Unknown noise schedule {kind!r}; choose one of {', '.join(SCHEDULES)}.")
        if num_steps < 2:
            raise UserError(f"A noise schedule needs at least 2 steps, not {num_steps}.")
        self.kind = kind
        self.num_steps = num_steps
        self.betas = linear_betas(num_steps) if kind == "linear" else cosine_betas(num_steps)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)
        self._on_device = {torch.device("cpu"): self.alphas_cumprod}  # copies for the batch helpers

    def __repr__(self) -> str:
        return f"NoiseSchedule(kind={self.kind!r}, num_steps={self.num_steps})"

    # Per-timestep values (float64, on the CPU).

    def alpha(self, t) -> torch.Tensor:
        return self.alphas_cumprod[torch.as_tensor(t).cpu()].sqrt()

    def sigma(self, t) -> torch.Tensor:
        return (1 - self.alphas_cumprod[torch.as_tensor(t).cpu()]).sqrt()

    def log_snr(self, t) -> torch.Tensor:
        """log(alpha^2 / sigma^2), decreasing in t."""
        alpha_bar = self.alphas_cumprod[torch.as_tensor(t).cpu()]
        return torch.log(alpha_bar / (1 - alpha_bar))

    def _alpha_sigma_like(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha(t) and sigma(t) shaped to broadcast against x (one value per batch entry)."""
        shape = tuple(t.shape) + (1,) * (x.ndim - t.ndim)
        if x.device not in self._on_device:  # indexing a copy on x's device: no host-device sync per step
            self._on_device[x.device] = self.alphas_cumprod.to(x.device)
        alpha_bar = self._on_device[x.device][t.to(x.device)].view(shape)
        return alpha_bar.sqrt().to(x.dtype), (1 - alpha_bar).sqrt().to(x.dtype)

    # Batch helpers.

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self._alpha_sigma_like(t, x0)
        return alpha * x0 + sigma * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        """What the network should output for x_t = add_noise(x0, noise, t)."""
        check_prediction(prediction)
        if prediction == "eps":
            return noise
        alpha, sigma = self._alpha_sigma_like(t, x0)
        return alpha * noise - sigma * x0

    def predict_x0_eps(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x0, eps) pair a network output stands for; exact inverse of training_target."""
        check_prediction(prediction)
        alpha, sigma = self._alpha_sigma_like(t, x_t)
        if prediction == "eps":
            return (x_t - sigma * model_output) / alpha, model_output
        # alpha^2 + sigma^2 = 1 makes v <-> (x0, eps) a rotation.
        return alpha * x_t - sigma * model_output, sigma * x_t + alpha * model_output

    def eps_from_x0(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self._alpha_sigma_like(t, x_t)
        return (x_t - alpha * x0) / sigma
