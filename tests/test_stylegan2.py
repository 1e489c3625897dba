"""StyleGAN2: layers against direct references, generator/discriminator shapes and ranges,
sampling options, and the objective's pieces (style mixing, lazy regularization, ADA)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from animegen.errors import UserError
from animegen.models import registry
from animegen.models.base import Noise
from animegen.models.ops.upfirdn2d import setup_filter, upsample2d
from animegen.models.stylegan2 import Conv2dLayer, Discriminator, StyleGAN2, minibatch_stddev, modulated_conv2d
from animegen.training.config import make_config
from animegen.training.objective import TrainContext
from animegen.training.objectives.stylegan2 import SPEC, r1_gamma_heuristic


pytestmark = pytest.mark.usefixtures("one_thread")


def build(resolution=16, **sets):
    torch.manual_seed(0)
    config = make_config(SPEC, "data", resolution, "tiny", sets, seed=0)
    model = StyleGAN2(config.model_config)
    objective = SPEC.objective(model, config.objective_config, TrainContext(torch.device("cpu")))
    return model, objective, config


def reference_modulated_conv(x, weight, styles, demodulate):
    """Per image: scale the weights by the styles, normalize each output filter, convolve."""
    outs = []
    for xi, si in zip(x, styles):
        w = weight * si[None, :, None, None]
        if demodulate:
            w = w / w.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
        outs.append(F.conv2d(xi[None], w, padding=weight.shape[-1] // 2))
    return torch.cat(outs)


@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_matches_per_image_convolution(demodulate):
    g = torch.Generator().manual_seed(0)
    x, weight, styles = torch.randn(3, 5, 8, 8, generator=g), torch.randn(4, 5, 3, 3, generator=g), torch.randn(3, 5, generator=g)
    got = modulated_conv2d(x.double(), weight.double(), styles.double(), demodulate=demodulate)
    torch.testing.assert_close(got, reference_modulated_conv(x.double(), weight.double(), styles.double(), demodulate))


@pytest.mark.parametrize("demodulate,up", [(True, False), (False, False), (True, True)])
def test_modulated_conv_gain_bias_and_padding_are_the_plain_ops(demodulate, up):
    """The folded output scale and bias (one pass, addcmul) equal scaling and adding after."""
    g = torch.Generator().manual_seed(2)
    x, weight, styles = torch.randn(2, 3, 6, 6, generator=g), torch.randn(4, 3, 3, 3, generator=g), torch.randn(2, 3, generator=g)
    bias, gain = torch.randn(4, generator=g), torch.tensor(0.7)
    f = setup_filter([1, 3, 3, 1])
    plain = modulated_conv2d(x, weight, styles, demodulate, up=up, resample_filter=f)
    got = modulated_conv2d(x, weight, styles, demodulate, up=up, resample_filter=f, gain=gain, bias=bias)
    torch.testing.assert_close(got, plain * gain + bias[None, :, None, None])
    if not up:  # "full" convolution: padding k - 1 == pad first, then "same"
        full = modulated_conv2d(x, weight, styles, demodulate, padding=2, bias=bias)
        torch.testing.assert_close(full, modulated_conv2d(F.pad(x, [1] * 4), weight, styles, demodulate, bias=bias))


def test_discriminator_scores_concatenated_batches_as_separate_ones():
    """D(fakes ++ reals, batches=2) is D(fakes) ++ D(reals): the minibatch-stddev groups stay
    within each batch (with one batch they would mix the two, and the logits differ)."""
    torch.manual_seed(0)
    D = Discriminator(16, 512, 64, mbstd_group=4)
    fakes, reals = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16) * 3
    joined = torch.cat([fakes, reals])
    torch.testing.assert_close(D(joined, batches=2), torch.cat([D(fakes), D(reals)]))
    assert not torch.allclose(D(joined), torch.cat([D(fakes), D(reals)]))


def test_upsampling_modulated_conv_equals_upsample_then_convolve():
    """Transposed conv + blur == blur-upsample + conv (linear filters commute), away from the border."""
    g = torch.Generator().manual_seed(1)
    x, weight, styles = torch.randn(2, 3, 6, 6, generator=g), torch.randn(4, 3, 3, 3, generator=g), torch.randn(2, 3, generator=g)
    f = setup_filter([1, 3, 3, 1]).double()
    got = modulated_conv2d(x.double(), weight.double(), styles.double(), up=True, resample_filter=f)
    want = reference_modulated_conv(upsample2d(x.double(), f), weight.double(), styles.double(), True)
    assert got.shape == want.shape == (2, 4, 12, 12)
    torch.testing.assert_close(got[..., 3:-3, 3:-3], want[..., 3:-3, 3:-3])


def test_downsampling_conv_halves_and_keeps_constants():
    layer = Conv2dLayer(2, 2, 3, bias=False, activation=False, down=True)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0, 1, 1] = layer.weight[1, 1, 1, 1] = 1 / layer.weight_gain  # identity taps
    out = layer(torch.full((1, 2, 8, 8), 0.5))
    assert out.shape == (1, 2, 4, 4)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], torch.full((1, 2, 2, 2), 0.5))


def test_minibatch_stddev_against_numpy():
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    out = minibatch_stddev(x, group_size=4)
    groups = x.numpy().reshape(4, 2, 3, 4, 4)  # image i is in group i % 2
    std = np.sqrt(groups.var(axis=0) + 1e-8).mean(axis=(1, 2, 3))
    assert out.shape == (8, 4, 4, 4)
    torch.testing.assert_close(out[:, :3], x)
    np.testing.assert_allclose(out[:, 3, 0, 0].numpy(), std[np.arange(8) % 2], rtol=1e-6)


@pytest.mark.parametrize("resolution", [16, 32])
def test_generator_and_discriminator_shapes_and_ranges(resolution):
    model, objective, _ = build(resolution)
    assert model.num_ws == 2 * int(math.log2(resolution)) - 2
    images = model.sample(Noise(range(5)))
    assert images.shape == (5, 3, resolution, resolution) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
    logits = objective.D(images)
    assert logits.shape == (5,) and torch.isfinite(logits).all()
    with pytest.raises(UserError, match="power-of-two"):
        Discriminator(24, 512, 64)


def test_sampling_options():
    model, _, _ = build(16)
    with torch.no_grad():
        for conv in model.synthesis.convs:
            conv.noise_strength.fill_(0.5)  # zero at init, which would hide the noise modes
    sample = lambda seeds, **o: model.sample(Noise(seeds), **model.resolve_sample_options(o))
    # A seed's image does not depend on its batch; random noise is per seed.
    torch.testing.assert_close(sample([3, 4])[1:], sample([4]), atol=1e-5, rtol=0)
    assert not torch.allclose(sample([4], noise_mode="random"), sample([4], noise_mode="none"))
    torch.testing.assert_close(sample([4], noise_mode="const"), sample([4], noise_mode="const"))
    assert not torch.allclose(sample([4], noise_mode="const"), sample([4], noise_mode="none"))
    # Truncation psi = 0 gives every seed the average w; psi = 1 is no truncation.
    model.mapping.w_avg.normal_()
    flat = sample([1, 2], truncation=0.0, noise_mode="none")
    torch.testing.assert_close(flat[0], flat[1])
    torch.testing.assert_close(sample([1], truncation=1.0), sample([1]))
    # Style mixing: from layer L on, the styles come from the mix seed.
    mixed = sample([1], mix_seed=2, mix_layer=0, noise_mode="none")
    torch.testing.assert_close(mixed, sample([2], noise_mode="none"))
    assert not torch.allclose(sample([1], mix_seed=2, mix_layer=3, noise_mode="none"), mixed)
    with pytest.raises(UserError, match="noise-mode .* must be one of random, const, none"):
        model.resolve_sample_options({"noise_mode": "loud"})
    with pytest.raises(UserError, match="mix_layer"):
        model.resolve_sample_options({"mix_seed": 2, "mix_layer": model.num_ws})
    with pytest.raises(UserError, match="does not take"):
        model.resolve_sample_options({"sampler": "ddim"})


def test_mapping_lr_multiplier_and_w_avg():
    model, _, _ = build(16)
    layer = model.mapping.layers[0]
    # Stored weights are N(0, 1/lr_mult^2); the effective ones have the usual He scale.
    assert 50 < layer.weight.std() < 200
    assert math.isclose(layer.weight_gain, 0.01 / math.sqrt(64))
    z = torch.randn(16, 64)
    w = model.mapping(z)[:, 0]
    model.mapping(z, update_w_avg=True)
    torch.testing.assert_close(model.mapping.w_avg, 0.005 * w.mean(0))


def test_style_mixing_switches_latent_once():
    model, objective, _ = build(16, style_mixing=1.0)
    torch.manual_seed(1)
    ws = objective.generate_ws(32)
    changes = (ws[:, 1:] != ws[:, :-1]).any(dim=2)  # (N, num_ws - 1)
    assert (changes.sum(1) == 1).all()  # exactly one cutoff per image...
    cutoffs = changes.float().argmax(1) + 1
    assert cutoffs.min() >= 1 and cutoffs.max() <= model.num_ws - 1 and len(cutoffs.unique()) > 2  # ...spread out


def test_objective_lazy_regularization_and_state():
    model, objective, config = build(16, batch=8, r1_interval=2, pl_interval=2, ada_interval=1, ada_kimg=0.1)
    c = 2 / 3
    assert math.isclose(objective.optimizers["D"].param_groups[0]["lr"], 0.0025 * c)
    assert math.isclose(objective.optimizers["G"].param_groups[0]["betas"][1], 0.99**c)
    assert math.isclose(r1_gamma_heuristic(64, 32), 0.0256)
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    weights = [p.clone() for p in objective.D.parameters()]
    first = objective.train_step(real, 0)
    second = objective.train_step(real, 1)
    assert {"loss_g", "loss_d", "r1_penalty", "pl_penalty", "ada_p", "ada_rt"} <= set(first)
    assert "r1_penalty" not in second and "pl_penalty" not in second
    assert all(torch.isfinite(v) for v in first.values())
    assert any(not torch.equal(a, b) for a, b in zip(weights, objective.D.parameters()))
    assert objective.pl_mean > 0 and model.mapping.w_avg.abs().sum() > 0
    state = objective.extra_state()
    _, other, _ = build(16)
    other.load_extra_state(state)
    assert other.extra_state() == state


def optimized_losses(objective, step):
    """Run `step` (one of the objective's pieces) with `optimize` recording the loss it is
    given instead of stepping: (what step returns, {optimizer name: loss})."""
    losses = {}
    objective.optimize = lambda name, loss, clip_grad_norm=None: losses.setdefault(name, loss)
    try:
        return step(), losses
    finally:
        del objective.optimize


def assert_same_loss_and_gradients(loss, direct, params):
    params = [p for p in params if p.requires_grad]
    torch.testing.assert_close(loss, direct)
    for a, b in zip(torch.autograd.grad(loss, params, allow_unused=True), torch.autograd.grad(direct, params, allow_unused=True)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("augment", ["off", "fixed:0.5"])
def test_r1_penalty_matches_direct_autograd(augment):
    """R1 = gamma/2 * E|grad_x D(x)|^2, the gradient taken with respect to the reals before
    augmentation (as NVIDIA's code does), D's loss weighted by r1_interval (lazy
    regularization): loss value and its gradients on D match a direct computation."""
    gamma, interval = 1.5, 4
    _, objective, _ = build(16, batch=8, augment=augment, r1_gamma=gamma, r1_interval=interval)
    real = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    objective.draws.manual_seed(5)
    penalty, losses = optimized_losses(objective, lambda: objective._r1_step(real))
    objective.draws.manual_seed(5)  # the same augmentations
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective.D(objective.augment_pipe(x, objective)).sum(), x, create_graph=True)
    direct = grad.square().flatten(1).sum(1).mean()
    torch.testing.assert_close(penalty, direct.detach())
    assert_same_loss_and_gradients(losses["D"], gamma / 2 * direct * interval, objective.D.parameters())


def test_path_length_penalty_matches_nvidia_formula():
    """StyleGAN2's path length regularization, as NVIDIA computes it: on n / pl_batch_shrink
    images, y = randn / sqrt(H W), J^T y = d sum(img * y) / d ws, length = sqrt(mean over
    layers of |J^T y|^2 summed over w), target a = EMA of the mean length (rate pl_decay),
    penalty = E (length - a)^2, G's loss = penalty * pl_weight * pl_interval. Two steps, so
    the EMA moves from 0 and then from its first value."""
    weight, interval, decay = 2.0, 4, 0.01
    model, objective, _ = build(16, batch=8, pl_weight=weight, pl_interval=interval, pl_decay=decay, pl_batch_shrink=2)
    target = torch.zeros([])
    for seed in (1, 2):
        objective.draws.manual_seed(seed)
        penalty, losses = optimized_losses(objective, lambda: objective._path_length_step(8))
        objective.draws.manual_seed(seed)  # the same latents, style mixing and noise
        ws = objective.generate_ws(4)
        images = objective.synthesize(ws)
        y = objective.randn(*images.shape) / math.sqrt(16 * 16)
        (grad,) = torch.autograd.grad((images * y).sum(), ws, create_graph=True)
        lengths = grad.square().sum(2).mean(1).sqrt()
        target = target + decay * (lengths.detach().mean() - target)
        direct = (lengths - target).square().mean()
        torch.testing.assert_close(objective.pl_mean, target)
        torch.testing.assert_close(penalty, direct.detach())
        assert_same_loss_and_gradients(losses["G"], direct * weight * interval, model.parameters())


def test_registered():
    assert registry.get("stylegan2") is SPEC
    # paper64 is StyleGAN2-ADA's "auto" config at 64 px: 2 mapping layers, channel_base 16384.
    config = make_config(SPEC, "data", 64, "paper64", {}, seed=0)
    assert config.model_config.mapping_layers == 2 and config.model_config.channel_base == 16384
    assert config.objective_config.d_channel_base == 16384 and config.train.batch == 32
