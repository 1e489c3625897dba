"""Noise schedules, samplers and the U-Net.

The samplers are checked on toy data with known answers: for Gaussian data, and for a 1-D mixture of
Gaussians, the optimal denoiser E[x0 | x_t] is analytic, so the samplers run on the exact denoiser and
their output can be compared with the data distribution itself; the deterministic samplers (probability
flow ODE) can even be compared sample by sample with the exact ODE solution, which is known too
(affine for a Gaussian, the quantile map in 1-D).
"""

import dataclasses
import math

import pytest
import torch
from scipy import stats

from animegen.diffusion.samplers import sample, timesteps
from animegen.diffusion.schedule import NoiseSchedule
from animegen.errors import UserError
from animegen.models.unet import UNet, paper64_config, tiny_config

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """The toy tensors are small: on a shared 2-core machine two threads mostly wait on each other
    (measured 8x slower than one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def alpha_sigma(schedule: NoiseSchedule, t: torch.Tensor):
    """The test's own alpha(t), sigma(t) from alphas_cumprod; the samplers call with one t per batch."""
    assert (t == t[0]).all()
    alpha_bar = schedule.alphas_cumprod[t[0]]
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def as_prediction(x0, x, alpha, sigma, prediction):
    eps = (x - alpha * x0) / sigma
    return eps if prediction == "eps" else alpha * eps - sigma * x0


# --- Toy 1: Gaussian data N(MU, diag(S^2)) in 2-D -------------------------------------------------

MU = torch.tensor([0.5, -1.0], dtype=F64)
S = torch.tensor([0.3, 1.5], dtype=F64)


def gaussian_denoiser(schedule, prediction="eps"):
    def denoise(x, t):
        alpha, sigma = alpha_sigma(schedule, t)
        x0 = MU + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x - alpha * MU)
        return as_prediction(x0, x, alpha, sigma, prediction)

    return denoise


def gaussian_ode_solution(schedule, z):
    """The probability-flow ODE maps the marginal at T-1 affinely onto the data, sample by sample."""
    alpha, sigma = schedule.alpha(schedule.num_steps - 1), schedule.sigma(schedule.num_steps - 1)
    return MU + S * (z - alpha * MU) / (alpha**2 * S**2 + sigma**2).sqrt()


def toy_sample(denoiser, schedule, n, dims, sampler, steps=None, eta=0.0, seed=0, prediction="eps"):
    return sample(
        denoiser, schedule, (n, dims), sampler=sampler, steps=steps, eta=eta, generator=seeded(seed),
        dtype=F64, prediction=prediction, clip_x0=False,
    )


def initial_noise(n, dims, seed=0):
    """The samplers' first draw from the generator is the initial noise."""
    return torch.randn((n, dims), generator=seeded(seed), dtype=F64)


def relative_rms(a, reference):
    return ((a - reference).pow(2).mean().sqrt() / reference.std()).item()


def assert_gaussian_matches(samples):
    n = samples.shape[0]
    for d in range(2):
        x, mu, s = samples[:, d], MU[d].item(), S[d].item()
        assert abs(x.mean().item() - mu) < 4 * s / math.sqrt(n)
        assert abs(x.std().item() / s - 1) < 0.03  # 20k samples: std error ~0.5%; DDPM's own bias ~1%
        assert stats.kstest(x.numpy(), "norm", args=(mu, s)).pvalue > KS_P_MIN


N = 20_000
KS_P_MIN = 0.001  # fixed seeds make these tests deterministic; a true null fails 0.1% of seeds


def test_ancestral_ddpm_samples_the_gaussian():
    schedule = NoiseSchedule("linear")
    assert_gaussian_matches(toy_sample(gaussian_denoiser(schedule), schedule, N, 2, "ddpm"))


def test_ddim_eta_one_all_steps_samples_the_gaussian_too():
    schedule = NoiseSchedule("cosine")
    samples = toy_sample(gaussian_denoiser(schedule, "v"), schedule, N, 2, "ddim", eta=1.0, seed=1, prediction="v")
    assert_gaussian_matches(samples)


def test_ddim_eta_one_all_steps_is_ancestral_ddpm_sample_by_sample():
    # Same noise, same draw order: the two update rules agree, whichever prediction the network makes.
    schedule = NoiseSchedule("linear")
    ddpm = toy_sample(gaussian_denoiser(schedule), schedule, 256, 2, "ddpm")
    for prediction in ("eps", "v"):
        denoiser = gaussian_denoiser(schedule, prediction)
        ddim = toy_sample(denoiser, schedule, 256, 2, "ddim", eta=1.0, prediction=prediction)
        torch.testing.assert_close(ddim, ddpm, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind, dpm20_bound", [("linear", 0.03), ("cosine", 0.015)])
def test_deterministic_samplers_converge_to_the_exact_ode_solution(kind, dpm20_bound):
    schedule = NoiseSchedule(kind)
    denoiser = gaussian_denoiser(schedule)
    n = 4000
    exact = gaussian_ode_solution(schedule, initial_noise(n, 2))
    ddim500 = toy_sample(denoiser, schedule, n, 2, "ddim", steps=500)
    dpm20 = toy_sample(denoiser, schedule, n, 2, "dpm-solver++", steps=20)
    assert relative_rms(ddim500, exact) < 0.005  # measured 0.0030 (linear), 0.0023 (cosine)
    # The criterion: DPM-Solver++ at 20 steps lands close to DDIM at 500 (measured 0.022, 0.009) ...
    assert relative_rms(dpm20, ddim500) < dpm20_bound
    # ... far closer than DDIM at the same 20 steps (measured 0.068, 0.053), or either at 3 steps (0.3-0.37).
    assert relative_rms(toy_sample(denoiser, schedule, n, 2, "ddim", steps=20), ddim500) > 2 * dpm20_bound
    assert relative_rms(toy_sample(denoiser, schedule, n, 2, "dpm-solver++", steps=3), ddim500) > 0.2
    # DDIM at 50 steps samples a slightly narrower Gaussian (first-order error, measured 0.92 x S[0]).
    ddim50 = toy_sample(denoiser, schedule, n, 2, "ddim", steps=50)
    torch.testing.assert_close(ddim50.std(0) / S, torch.ones(2, dtype=F64), rtol=0, atol=0.1)


def test_eps_and_v_prediction_give_the_same_samples():
    schedule = NoiseSchedule("cosine")
    for sampler, steps in (("ddim", 50), ("dpm-solver++", 20)):
        eps, v = (
            toy_sample(gaussian_denoiser(schedule, p), schedule, 256, 2, sampler, steps=steps, prediction=p)
            for p in ("eps", "v")
        )
        torch.testing.assert_close(v, eps, rtol=0, atol=1e-8)


# --- Toy 2: a 1-D mixture of two Gaussians (nonlinear optimal denoiser) ---------------------------

WEIGHTS = torch.tensor([0.3, 0.7], dtype=F64)
MIX_MU = torch.tensor([-1.0, 1.2], dtype=F64)
MIX_S = torch.tensor([0.25, 0.4], dtype=F64)


def mixture_denoiser(schedule):
    def denoise(x, t):  # x: (n, 1)
        alpha, sigma = alpha_sigma(schedule, t)
        var = alpha**2 * MIX_S**2 + sigma**2  # per component, of x_t
        log_resp = torch.log(WEIGHTS) - 0.5 * torch.log(var) - 0.5 * (x - alpha * MIX_MU) ** 2 / var
        x0_per_component = MIX_MU + alpha * MIX_S**2 / var * (x - alpha * MIX_MU)
        x0 = (torch.softmax(log_resp, dim=1) * x0_per_component).sum(1, keepdim=True)
        return as_prediction(x0, x, alpha, sigma, "eps")

    return denoise


def mixture_cdf(x, alpha=1.0, sigma=0.0):
    """CDF of x_t for x0 from the mixture."""
    std = (alpha**2 * MIX_S**2 + sigma**2).sqrt()
    return (WEIGHTS * torch.special.ndtr((x[..., None] - alpha * MIX_MU) / std)).sum(-1)


def mixture_quantile(p):
    """The data's quantile function at probabilities p (by bisection)."""
    low, high = torch.full_like(p, -10.0), torch.full_like(p, 10.0)
    for _ in range(60):
        mid = (low + high) / 2
        below = mixture_cdf(mid) < p
        low, high = torch.where(below, mid, low), torch.where(below, high, mid)
    return (low + high) / 2


def mixture_ode_solution(schedule, z):
    """In 1-D the ODE flow preserves order, so it is the quantile map from x_{T-1} to x0."""
    t = schedule.num_steps - 1
    return mixture_quantile(mixture_cdf(z, schedule.alpha(t), schedule.sigma(t)))


def test_ancestral_ddpm_samples_the_mixture():
    schedule = NoiseSchedule("linear")
    x = toy_sample(mixture_denoiser(schedule), schedule, N, 1, "ddpm")[:, 0]
    # Measured p = 0.007 (seed 0; 0.46 and 0.89 for seeds 1, 2). DDIM at 50 steps: p = 0.0002.
    assert stats.kstest(x.numpy(), lambda v: mixture_cdf(torch.as_tensor(v)).numpy()).pvalue > KS_P_MIN
    assert abs((x < 0).double().mean().item() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / N)


@pytest.mark.parametrize("kind, dpm20_bound", [("linear", 0.06), ("cosine", 0.025)])
def test_dpm_solver_follows_the_exact_ode_on_the_mixture_at_second_order(kind, dpm20_bound):
    schedule = NoiseSchedule(kind)
    n = 4000
    exact = mixture_ode_solution(schedule, initial_noise(n, 1))
    error = {
        (sampler, steps): relative_rms(toy_sample(mixture_denoiser(schedule), schedule, n, 1, sampler, steps), exact)
        for sampler in ("ddim", "dpm-solver++")
        for steps in (20, 50)
    }
    # Measured: DPM-Solver++ 0.044 / 0.017 (linear / cosine) at 20 steps, 0.0071 / 0.0030 at 50;
    # DDIM 0.090 / 0.067 at 20. Error ratios 20 -> 50 steps: second order 6.25, first order 2.5.
    assert error["dpm-solver++", 20] < dpm20_bound
    assert error["dpm-solver++", 20] / error["dpm-solver++", 50] > 4
    assert 1.5 < error["ddim", 20] / error["ddim", 50] < 3.5


# --- Determinism, options, bad requests -----------------------------------------------------------

SAMPLER_RUNS = [("ddpm", None, 0.0), ("ddim", 10, 0.0), ("ddim", 10, 0.7), ("dpm-solver++", 10, 0.0)]


@pytest.mark.parametrize("sampler, steps, eta", SAMPLER_RUNS)
def test_same_seed_same_samples_other_seed_other_samples(sampler, steps, eta):
    schedule = NoiseSchedule("linear")
    denoiser = mixture_denoiser(schedule)
    first, again, other = (
        sample(denoiser, schedule, (8, 1), sampler, steps, eta, generator=seeded(s), clip_x0=False) for s in (3, 3, 4)
    )
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("sampler, steps, eta", SAMPLER_RUNS)
def test_per_sample_generators_make_a_sample_independent_of_its_batch(sampler, steps, eta):
    schedule = NoiseSchedule("cosine")
    denoiser = mixture_denoiser(schedule)
    batch = sample(denoiser, schedule, (3, 1), sampler, steps, eta, generator=[seeded(s) for s in (0, 1, 2)])
    alone = sample(denoiser, schedule, (1, 1), sampler, steps, eta, generator=[seeded(1)])
    torch.testing.assert_close(batch[1:2], alone)


def test_clip_x0_keeps_samples_in_range():
    schedule = NoiseSchedule("linear")

    def far_off(x, t):  # predicts x0 = 3 everywhere
        alpha, sigma = alpha_sigma(schedule, t)
        return as_prediction(torch.full_like(x, 3.0), x, alpha.float(), sigma.float(), "eps")

    for sampler in ("ddpm", "ddim", "dpm-solver++"):
        clipped = sample(far_off, schedule, (16, 3, 4, 4), sampler, generator=seeded(0))
        assert clipped.abs().max() <= 1.0 and clipped.min() > 0.99
        unclipped = sample(far_off, schedule, (16, 3, 4, 4), sampler, generator=seeded(0), clip_x0=False)
        torch.testing.assert_close(unclipped, torch.full_like(unclipped, 3.0), rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sampler="euler"),
        dict(sampler="ddim", steps=0),
        dict(sampler="ddim", steps=1001),
        dict(sampler="ddpm", steps=50),
        dict(sampler="dpm-solver++", steps=20, eta=0.5),
        dict(sampler="ddim", steps=20, eta=1.5),
        dict(sampler="ddim", steps=20, prediction="x0"),
    ],
)
def test_bad_sampling_requests_are_rejected(kwargs):
    schedule = NoiseSchedule("linear")
    with pytest.raises(UserError):
        sample(gaussian_denoiser(schedule), schedule, (4, 2), **kwargs)


def test_bad_schedules_are_rejected():
    with pytest.raises(UserError):
        NoiseSchedule("quadratic")
    with pytest.raises(UserError):
        NoiseSchedule("linear", num_steps=1)


@pytest.mark.parametrize("total", [1000, 37])
def test_trailing_timesteps(total):
    assert timesteps(total, total) == list(range(total - 1, -1, -1))
    for steps in range(1, total + 1):
        ts = timesteps(total, steps)
        assert len(ts) == steps and ts[0] == total - 1 and ts[-1] >= 0
        assert all(a > b for a, b in zip(ts, ts[1:]))
    assert timesteps(1000, 20)[-1] == 49 and timesteps(1000, 4) == [999, 749, 499, 249]


# --- Schedule -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_is_a_decreasing_signal_level_in_the_open_unit_interval(kind):
    schedule = NoiseSchedule(kind)
    alpha_bar = schedule.alphas_cumprod
    assert alpha_bar.dtype == F64 and alpha_bar.shape == (1000,)
    assert (alpha_bar > 0).all() and (alpha_bar < 1).all() and (alpha_bar.diff() < 0).all()
    t = torch.arange(1000)
    torch.testing.assert_close(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones(1000, dtype=F64))
    assert (schedule.log_snr(t).diff() < 0).all()


def test_linear_and_cosine_endpoints():
    linear = NoiseSchedule("linear")
    assert linear.betas[0].item() == pytest.approx(1e-4) and linear.betas[-1].item() == pytest.approx(0.02)
    assert linear.alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=0.01)  # DDPM: x_T is nearly pure noise

    cosine = NoiseSchedule("cosine")
    assert cosine.betas[-1].item() == 0.999 and cosine.betas.max().item() == 0.999  # clipped: the last beta is 1
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 250, 500, 900):  # unclipped region: alpha_bar(t) = f(t + 1) / f(0)
        assert cosine.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert cosine.alphas_cumprod[-1].item() < 1e-8


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_prediction_conversions_round_trip(kind, prediction):
    schedule = NoiseSchedule(kind)
    g = seeded(0)
    x0, noise = torch.randn(6, 3, 4, 4, generator=g, dtype=F64), torch.randn(6, 3, 4, 4, generator=g, dtype=F64)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.training_target(x0, noise, t, prediction)
    x0_back, eps_back = schedule.predict_x0_eps(target, x_t, t, prediction)
    # alpha(999) is 5e-5 under the cosine schedule: recovering x0 from eps divides by it.
    torch.testing.assert_close(x0_back, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(eps_back, noise, rtol=0, atol=1e-12)
    torch.testing.assert_close(schedule.eps_from_x0(x0, x_t, t), noise, rtol=0, atol=1e-12)
    if prediction == "v":  # the definition, written out independently
        alpha, sigma = schedule.alpha(t).view(-1, 1, 1, 1), schedule.sigma(t).view(-1, 1, 1, 1)
        torch.testing.assert_close(target, alpha * noise - sigma * x0, rtol=0, atol=1e-15)
        torch.testing.assert_close(x_t, alpha * x0 + sigma * noise, rtol=0, atol=1e-15)


# --- U-Net ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [16, 32])
def test_tiny_unet_keeps_the_shape_and_starts_at_zero(resolution):
    torch.manual_seed(0)
    net = UNet(tiny_config(resolution))
    x = torch.randn(2, 3, resolution, resolution)
    out = net(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    assert (out == 0).all()  # zero-initialized output conv


def perturb_zero_initialized(net: UNet) -> UNet:
    """Give the zero-initialized layers random weights, as training would, so every path carries signal."""
    g = seeded(1)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and (p == 0).all():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def test_unet_output_depends_on_the_timestep():
    torch.manual_seed(0)
    net = perturb_zero_initialized(UNet(tiny_config(16))).eval()
    x = torch.randn(1, 3, 16, 16).expand(3, -1, -1, -1)
    out = net(x, torch.tensor([10, 500, 10]))
    torch.testing.assert_close(out[0], out[2])
    assert (out[0] - out[1]).abs().mean() > 1e-3 * out.abs().mean()


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = perturb_zero_initialized(UNet(tiny_config(16)))
    net(torch.randn(2, 3, 16, 16), torch.tensor([3, 700])).pow(2).mean().backward()
    dead = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_dropout_is_active_in_training_only():
    config = dataclasses.replace(tiny_config(16), dropout=0.5)
    torch.manual_seed(0)
    net = perturb_zero_initialized(UNet(config))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    assert not torch.equal(net(x, t), net(x, t))
    net.eval()
    assert torch.equal(net(x, t), net(x, t))


def test_preset_sizes():
    with torch.device("meta"):  # counts parameters without allocating them
        paper64, tiny = UNet(paper64_config()), UNet(tiny_config())
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert 35e6 < count(paper64) < 40e6  # DDPM's 35.7M CIFAR-10 net, plus scale-shift projections
    assert count(tiny) < 2e6


def test_unet_config_rejects_impossible_layouts():
    with pytest.raises(UserError):
        tiny_config(resolution=20)  # not divisible by 4
    with pytest.raises(UserError):
        tiny_config(resolution=64)  # levels 64, 32, 16: no 8 px level for the attention
