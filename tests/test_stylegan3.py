"""StyleGAN3 T and R: the layer schedule, shapes and ranges, the input transform, the
magnitude EMA, config R's filters and D blur. Exact resume of both configs runs in
tests/test_training.py (its FAMILIES)."""

import math

import pytest
import torch

from animegen.errors import UserError
from animegen.models import registry
from animegen.models.base import Noise
from animegen.models.stylegan3 import StyleGAN3Config, StyleGAN3RConfig, band_schedule, content_transform
from animegen.training.config import make_config
from animegen.training.objectives.stylegan3 import SPEC_R, SPEC_T, gaussian_blur
from animegen.training.objective import TrainContext

pytestmark = pytest.mark.usefixtures("one_thread")


def build(spec, resolution=16, **sets):
    torch.manual_seed(0)
    config = make_config(spec, "data", resolution, "tiny", sets, seed=0)
    model = spec.model(config.model_config)
    objective = spec.objective(model, config.objective_config, TrainContext(torch.device("cpu")))
    return model, objective


@pytest.mark.parametrize("resolution", [16, 64, 256])
def test_band_schedule_follows_the_paper(resolution):
    bands = band_schedule(StyleGAN3Config(resolution=resolution))
    layers = bands[1:]
    assert len(layers) == 15 and bands[0] == layers[0]  # 14 layers + ToRGB; the input shares layer 0's band
    cutoffs = [b.cutoff for b in layers]
    assert cutoffs[0] == 2 and all(a <= b for a, b in zip(cutoffs, cutoffs[1:]))
    for b in layers[-3:]:  # the critically sampled layers and ToRGB: f_c at Nyquist, no margin for the last two
        assert b.cutoff == pytest.approx(resolution / 2) and b.sampling_rate == resolution
    assert [b.size for b in layers[-2:]] == [resolution, resolution]
    assert all(b.size == b.sampling_rate + 20 for b in layers[:-2])
    for b in layers:  # the sampling rate holds the stopband (f_c + f_h) below Nyquist or sits at the resolution
        assert b.sampling_rate >= min(2 * b.cutoff, resolution) and b.sampling_rate & (b.sampling_rate - 1) == 0
        assert b.half_width > 0
    assert layers[-1].channels == 3 and max(b.channels for b in layers) <= 512
    if resolution == 256:  # the paper's FFHQ-U 256 generator, layer by layer
        assert [b.size for b in layers] == [36, 36, 36, 52, 52, 84, 84, 148, 148, 148, 276, 276, 276, 256, 256]
        assert [b.channels for b in layers] == [512] * 9 + [362, 256, 181, 128, 128, 3]


@pytest.mark.parametrize("spec", [SPEC_T, SPEC_R])
@pytest.mark.parametrize("resolution", [16, 32])
def test_generator_shapes_and_ranges(spec, resolution):
    model, objective = build(spec, resolution)
    with torch.no_grad():
        images = model.sample(Noise([0, 1, 2], "cpu"))
        logits = objective.D(images)
    assert images.shape == (3, 3, resolution, resolution) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.abs().max() <= 1 and images.std() > 0.01
    assert not torch.equal(images[0], images[1])
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    ws = model.mapping(torch.randn(2, model.z_dim))
    assert ws.shape == (2, model.num_ws, model.config.w_dim) and model.num_ws == model.config.num_layers + 2


def test_config_r_uses_1x1_convs_radial_filters_and_doubled_channels():
    t, _ = build(SPEC_T, 32)
    r, _ = build(SPEC_R, 32)
    assert isinstance(r.config, StyleGAN3RConfig) and r.config.channel_max == 2 * t.config.channel_max
    n, critical = r.config.num_layers, r.config.num_critical
    for i, (lt, lr) in enumerate(zip(t.synthesis.layers, r.synthesis.layers)):
        assert abs(lr.weight.shape[0] - 2 * lt.weight.shape[0]) <= 1 or i == n
        assert lr.weight.shape[-1] == 1 and lt.weight.shape[-1] == (1 if i == n else 3)
        assert lt.down_filter.ndim == 1 and lr.up_filter.ndim == 1
        radial = lr.down_filter.ndim == 2
        assert radial == (i < n - critical and lr.down > 1)
        if radial:
            assert torch.allclose(lr.down_filter, lr.down_filter.T)


def test_content_transform_moves_content_as_documented():
    """The matrix maps output coordinates to input ones: content at input point q shows up
    at the output point p with m p = q."""
    m = content_transform(translate=(0.25, 0.0), rotate=90)
    q = torch.tensor([0.5, 0.0, 1.0])  # right of centre
    p = torch.linalg.solve(m, q)
    # Turned counterclockwise as displayed (y down): right -> up, then moved right by 0.25.
    torch.testing.assert_close(p, torch.tensor([0.25, -0.5, 1.0]), atol=1e-6, rtol=0)
    assert torch.equal(content_transform(), torch.eye(3))


def test_input_transform_moves_the_content():
    """Moving the input by (1/4, -1/8) image equals the image shifted by (8, -4) pixels up to
    the small border effects of tiny's margins; a turn by 360 degrees changes nothing."""
    model, _ = build(SPEC_T, 32)
    with torch.no_grad():
        base = model.sample(Noise([3], "cpu"))
        moved = model.sample(Noise([3], "cpu"), translate=(0.25, -0.125))
        turned = model.sample(Noise([3], "cpu"), rotate=360.0)
    assert base.abs().max() > 0.1
    torch.testing.assert_close(moved[..., :-4, 8:], base[..., 4:, :-8], atol=3e-3, rtol=0)
    torch.testing.assert_close(turned, base, atol=1e-5, rtol=0)


def test_sampling_options():
    model, _ = build(SPEC_T, 16)
    options = model.resolve_sample_options({"translate": "0.1, -0.2", "rotate": 30, "noise_mode": None})
    assert options == {"truncation": 1.0, "translate": (0.1, -0.2), "rotate": 30.0}
    for bad in ("0.1", "a,b", "1,2,3"):
        with pytest.raises(UserError, match="translate"):
            model.resolve_sample_options({"translate": bad})
    with pytest.raises(UserError, match="noise_mode"):
        model.resolve_sample_options({"noise_mode": "const"})
    with torch.no_grad():
        plain, truncated = (model.sample(Noise([1], "cpu"), truncation=psi) for psi in (1.0, 0.0))
    assert not torch.equal(plain, truncated)  # psi=0 renders w_avg


def test_magnitude_ema_tracks_the_input_rms_only_when_asked():
    model, _ = build(SPEC_T, 16)
    ws = model.mapping(torch.randn(4, model.z_dim))
    layer = model.synthesis.layers[1]
    before = [l.magnitude_ema.clone() for l in model.synthesis.layers]
    with torch.no_grad():
        model.synthesis(ws)
    assert all(torch.equal(a, l.magnitude_ema) for a, l in zip(before, model.synthesis.layers))
    x = torch.randn(4, layer.weight.shape[1], layer.in_size, layer.in_size) * 3
    with torch.no_grad():
        layer(x, ws[:, 2], update_emas=True)
    beta = layer.magnitude_ema_beta
    assert layer.magnitude_ema.item() == pytest.approx(beta * 1 + (1 - beta) * x.square().mean().item(), rel=1e-5)


def test_objective_updates_magnitude_emas_once_per_step_in_the_d_pass():
    model, objective = build(SPEC_T, 16, batch=4)
    flags = []
    for layer in model.synthesis.layers:
        layer.register_forward_pre_hook(lambda module, args, kwargs: flags.append(args[2]), with_kwargs=True)
    objective.train_step(torch.rand(4, 3, 16, 16) * 2 - 1, 1)
    layers = len(model.synthesis.layers)
    assert len(flags) == 2 * layers and sum(flags) == layers  # G pass without, D pass with
    assert all((layer.magnitude_ema != 1).item() for layer in model.synthesis.layers)


def test_config_r_blur_fades_out():
    model, objective = build(SPEC_R, 32, batch=4)
    c = objective.config
    assert c.blur_sigma * 256 == pytest.approx(10 / math.sqrt(2 * math.log(2)))
    objective.images_seen = 0
    assert objective.blur_pixels() == pytest.approx(c.blur_sigma * 32)
    objective.images_seen = int(c.blur_fade_kimg * 500)
    assert objective.blur_pixels() == pytest.approx(c.blur_sigma * 16)
    objective.images_seen = int(c.blur_fade_kimg * 1000)
    assert objective.blur_pixels() == 0
    _, t_objective = build(SPEC_T, 32)
    assert t_objective.blur_pixels() == 0


def test_r1_gamma_follows_stylegan3s_rule_unless_set():
    _, objective = build(SPEC_T, 32, batch=4)
    assert objective.default_r1_gamma(32) == pytest.approx(32**2 / 32768)
    assert objective.default_r1_gamma(16) == pytest.approx(0.0625)  # tiny: 32 px, batch 16
    objective.model.config.resolution = 128  # NVlabs' recommendation at batch 32: 0.5 at 128 px
    assert objective.default_r1_gamma(32) == pytest.approx(0.5)
    for sets, gamma in (({}, 32**2 / 32768 * 32 / 4), ({"r1_gamma": 3.0}, 3.0)):
        _, objective = build(SPEC_T, 32, batch=4, **sets)
        stepped = []
        objective.optimize = lambda name, loss: stepped.append(loss.item())
        penalty = objective._r1_step(torch.rand(4, 3, 32, 32) * 2 - 1)
        assert stepped[0] == pytest.approx(penalty.item() * gamma / 2 * objective.config.r1_interval, rel=1e-5)


def test_gaussian_blur_has_the_requested_width_and_keeps_constants():
    x = torch.zeros(1, 1, 41, 41)
    x[0, 0, 20, 20] = 1
    y = gaussian_blur(x, 2.5)[0, 0].double()
    assert y.sum().item() == pytest.approx(1.0, abs=1e-5)
    coords = torch.arange(41, dtype=torch.float64) - 20
    variance_x = (y.sum(0) * coords**2).sum().item()
    assert math.sqrt(variance_x) == pytest.approx(2.5, rel=0.03)
    flat = gaussian_blur(torch.full((1, 3, 24, 24), 0.3), 1.5)
    torch.testing.assert_close(flat[..., 5:-5, 5:-5], torch.full((1, 3, 14, 14), 0.3))
    assert torch.equal(gaussian_blur(x, 0.05), x)


@pytest.mark.parametrize("name, beta", [("stylegan2", 0.995), ("stylegan3-t", 0.998), ("stylegan3-r", 0.998)])
def test_w_avg_tracks_with_each_familys_beta(name, beta):
    """NVlabs' codes track w_avg with beta 0.995 in StyleGAN2(-ADA) and 0.998 in StyleGAN3: in
    every preset, and in the update the training step makes (two updates from zero)."""
    spec = registry.get(name)
    assert all(make_config(spec, "data", 64, preset, {}, 0).model_config.w_avg_beta == beta for preset in spec.presets)
    torch.manual_seed(0)
    model = spec.model(make_config(spec, "data", 16, "tiny", {}, seed=0).model_config)
    z = torch.randn(8, model.z_dim)
    w = model.mapping(z)[:, 0]
    for _ in range(2):
        model.mapping(z, update_w_avg=True)
    torch.testing.assert_close(model.mapping.w_avg, (1 - beta) * (1 + beta) * w.mean(0))


def test_registered_with_presets():
    assert registry.get("stylegan3-t") is SPEC_T and registry.get("stylegan3-r") is SPEC_R
    for spec in (SPEC_T, SPEC_R):
        assert set(spec.presets) == {"tiny", "paper64"}
        config = make_config(spec, "data", 64, "paper64", {}, seed=0)
        assert config.model_config.num_layers == 14 and config.model_config.margin == 10
        assert config.objective_config.pl_weight == 0 and config.objective_config.style_mixing == 0
        assert config.train.batch == 32 and config.objective_config.r1_gamma is None
        assert config.model_config.magnitude_ema_beta == pytest.approx(0.5 ** (32 / 20000))
        # NVlabs' StyleGAN3 D: StyleGAN2's residual D with G's channel_base (32768; R doubles G's only).
        assert config.objective_config.d_channel_base == 32768 and config.objective_config.d_channel_max == 512
    assert make_config(SPEC_R, "data", 64, "paper64", {}, 0).model_config.channel_max == 1024
    with pytest.raises(UserError, match="power-of-two"):
        band_schedule(StyleGAN3Config(resolution=48))
