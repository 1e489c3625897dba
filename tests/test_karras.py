"""The samplers in sigma (animegen.diffusion.karras) on data with an exact denoiser.

For Gaussian data N(MU, S^2) the denoiser is D(x; sigma) = MU + S^2 / (S^2 + sigma^2) (x - MU) and the
probability-flow ODE maps x at sigma_max affinely onto the data, sample by sample; for a 1-D mixture of
Gaussians D is analytic and the ODE flow is the quantile map. The samplers run on these exact denoisers
and are compared with the exact solutions (deterministic ones) or the data distribution (churn).
"""

import math

import pytest
import torch
from scipy import stats

from animegen.diffusion.karras import heun_invert, karras_sigmas, nfe, sample
from test_diffusion import MIX_MU, MIX_S, WEIGHTS, mixture_cdf, mixture_quantile, relative_rms

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")

MU = torch.tensor([0.5, -1.0], dtype=F64)
S = torch.tensor([0.3, 1.5], dtype=F64)
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def gaussian_denoiser(x, sigma):
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def gaussian_ode_solution(z):
    """x(sigma_max) = sigma_max z, carried to sigma = 0 by the exact flow."""
    return MU + S * (SIGMA_MAX * z - MU) / (S**2 + SIGMA_MAX**2).sqrt()


def sigmas(steps):
    return karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX, RHO)


def noise(n, dims, seed=0):
    return torch.randn((n, dims), generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_karras_schedule():
    levels = sigmas(18)
    assert len(levels) == 19 and levels[0] == pytest.approx(SIGMA_MAX) and levels[17] == pytest.approx(SIGMA_MIN)
    assert levels[-1] == 0 and all(a > b for a, b in zip(levels, levels[1:]))
    # Evenly spaced in sigma^(1/rho) (EDM eq. 5).
    roots = torch.tensor(levels[:-1], dtype=F64) ** (1 / RHO)
    torch.testing.assert_close(roots.diff(), roots.diff()[:1].expand(17), rtol=1e-9, atol=0)
    assert karras_sigmas(1, SIGMA_MIN, SIGMA_MAX, RHO) == [SIGMA_MAX, 0.0]
    assert nfe("heun", 18) == 35 and nfe("euler", 18) == 18 and nfe("dpm-solver++", 18) == 18


def test_deterministic_samplers_converge_to_the_exact_ode_solution_at_their_order():
    z = noise(4000, 2)
    exact = gaussian_ode_solution(z)
    error = {(sampler, n): relative_rms(sample(gaussian_denoiser, z, sigmas(n), sampler), exact)
             for sampler in ("heun", "euler", "dpm-solver++") for n in (10, 20, 40)}
    # Measured: Heun at 18 levels (35 evaluations) 0.033 of the data's std from the exact solution,
    # Euler at 18 levels 0.11; at 160 levels 0.0003 and 0.012.
    assert relative_rms(sample(gaussian_denoiser, z, sigmas(18), "heun"), exact) < 0.04
    # Halving the step: Heun's error / 4 (measured 4.4), Euler's / 2 (1.99), DPM-Solver++(2M)'s / 4 (4.7).
    assert error["heun", 20] / error["heun", 40] > 3.5
    assert 1.6 < error["euler", 20] / error["euler", 40] < 2.6
    assert error["dpm-solver++", 20] / error["dpm-solver++", 40] > 3.0
    assert error["heun", 20] < error["euler", 40]


def mixture_denoiser(x, sigma):  # x: (n, 1); the mixture of test_diffusion, in sigma
    var = MIX_S**2 + sigma**2
    log_resp = torch.log(WEIGHTS) - 0.5 * torch.log(var) - 0.5 * (x - MIX_MU) ** 2 / var
    per_component = MIX_MU + MIX_S**2 / var * (x - MIX_MU)
    return (torch.softmax(log_resp, dim=1) * per_component).sum(1, keepdim=True)


def mixture_ode_solution(z):
    """In 1-D the flow keeps order: the quantile map from x(sigma_max) to the data."""
    return mixture_quantile(mixture_cdf(SIGMA_MAX * z, 1.0, SIGMA_MAX))


def test_heun_and_dpm_solver_follow_the_exact_ode_on_the_mixture():
    z = noise(4000, 1)
    exact = mixture_ode_solution(z)
    error = {(sampler, n): relative_rms(sample(mixture_denoiser, z, sigmas(n), sampler), exact)
             for sampler, n in (("heun", 18), ("heun", 40), ("dpm-solver++", 35), ("euler", 35))}
    # Measured: Heun 0.029 at 18 levels (35 evaluations), 0.0054 at 40 (79); DPM-Solver++ 0.0099 and
    # Euler 0.082 at 35.
    assert error["heun", 18] < 0.035 and error["heun", 40] < 0.007 and error["dpm-solver++", 35] < 0.012
    assert error["euler", 35] > 5 * error["dpm-solver++", 35]


def test_stochastic_heun_samples_the_distribution():
    """With churn Heun solves an SDE: its samples are not the ODE's, but they are distributed as
    the data (given levels enough: at 18 levels both versions are off by KS p < 1e-8, at 100 the
    deterministic one has p = 0.56)."""
    n = 20_000
    z = noise(n, 1, seed=1)
    x = sample(mixture_denoiser, z, sigmas(100), "heun", churn=20.0, generator=torch.Generator().manual_seed(2))
    deterministic = sample(mixture_denoiser, z, sigmas(100), "heun")
    assert relative_rms(x, deterministic) > 1  # the churn moved the samples (independent ones: sqrt 2)
    assert stats.kstest(x[:, 0].numpy(), lambda v: mixture_cdf(torch.as_tensor(v)).numpy()).pvalue > 0.001
    assert abs((x < 0).double().mean().item() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)


def test_per_image_generators_make_churn_independent_of_the_batch():
    z = noise(3, 1)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = sample(mixture_denoiser, z, sigmas(6), "heun", churn=10.0, generator=gens([0, 1, 2]))
    alone = sample(mixture_denoiser, z[1:2], sigmas(6), "heun", churn=10.0, generator=gens([1]))
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-12)
    again = sample(mixture_denoiser, z, sigmas(6), "heun", churn=10.0, generator=gens([0, 1, 2]))
    assert torch.equal(batch, again)


@pytest.mark.parametrize("steps, bound", [(18, 0.04), (35, 0.004), (100, 2e-4)])
def test_heun_inversion_round_trip(steps, bound):
    """Data -> z by heun_invert -> data again by Heun: the mixture's nonlinear flow is retraced,
    closer with more levels (measured 0.031 at 18 levels, 0.0031 at 35, 1.5e-4 at 100)."""
    x = mixture_ode_solution(noise(2000, 1))
    z = heun_invert(mixture_denoiser, x, sigmas(steps))
    assert relative_rms(sample(mixture_denoiser, z, sigmas(steps), "heun"), x) < bound
    # z is close to the exact flow's preimage (measured 0.042, 0.0074, 8.6e-4).
    assert relative_rms(mixture_ode_solution(z), x) < 5 * bound
