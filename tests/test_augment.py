"""ADA: each augmentation's defining property, identity at p = 0, the p controller, and p
rising (or not) inside real StyleGAN2 training at 16 px."""

import math

import numpy as np
import pytest
import torch

from animegen.errors import UserError
from animegen.models.stylegan2 import StyleGAN2
from animegen.training.augment import GEOMETRIC_OPS, OPS, AugmentPipe, _rotation_matrix, parse_mode, resample
from animegen.training.config import make_config
from animegen.training.objective import TrainContext
from animegen.training.objectives.stylegan2 import SPEC


pytestmark = pytest.mark.usefixtures("one_thread")


class Rng:
    def __init__(self, seed=0):
        self.g = torch.Generator().manual_seed(seed)

    def rand(self, *shape):
        return torch.rand(shape, generator=self.g)

    def randn(self, *shape):
        return torch.randn(shape, generator=self.g)


def smooth_images(n=8, size=16, seed=0):
    """Band-limited colorful images in [-1, 1] (resampling them loses little)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 2 * math.pi, size + 1)[:-1]
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    freqs, phases = torch.randint(1, 3, (n, 3, 2), generator=g), torch.rand(n, 3, 1, 1, generator=g) * 6.28
    x = torch.sin(freqs[..., 0, None, None] * xx + phases) * torch.cos(freqs[..., 1, None, None] * yy)
    return 0.9 * x


def coordinate_images(n=8, size=16):
    """Every pixel distinct: channel 0 = row, 1 = column, 2 = image index (scaled to [-1, 1])."""
    r = torch.arange(size, dtype=torch.float32)
    rows, cols = torch.meshgrid(r, r, indexing="ij")
    x = torch.stack([rows.expand(n, -1, -1), cols.expand(n, -1, -1),
                     torch.arange(n, dtype=torch.float32)[:, None, None].expand(-1, size, size)], dim=1)
    return x / size * 2 - 1


def only(op, p=1.0):
    return AugmentPipe(f"fixed:{p}", ops=(op,))


def test_identity_at_p_zero():
    x = smooth_images()
    for mode in ("ada", "off", "fixed:0"):
        assert AugmentPipe(mode)(x, Rng()) is x


@pytest.mark.parametrize("op", OPS)
def test_each_op_changes_images_and_keeps_shape_and_range(op):
    x = smooth_images()
    out = only(op)(x, Rng())
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    changed = (out - x).flatten(1).abs().amax(1) > 1e-3
    assert changed.any()
    if op in ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac"):
        assert out.abs().max() <= 1.0, "geometric ops move pixels; values stay within the input's range"


@pytest.mark.parametrize("op", ["xflip", "rotate90", "xint"])
def test_blit_ops_copy_pixels_exactly(op):
    x = coordinate_images()
    out = only(op)(x, Rng())
    for xi, oi in zip(x, out):
        if op == "xflip":
            assert torch.equal(oi, xi) or torch.equal(oi, xi.flip(2))
        elif op == "rotate90":
            assert any(torch.equal(oi, torch.rot90(xi, k, dims=(1, 2))) for k in range(4))
        else:
            # A translation by whole pixels with mirrored borders: find the shift, check every pixel.
            a = xi.numpy()
            candidates = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)
                          if np.array_equal(oi.numpy(), np.pad(a, [(0, 0), (2, 2), (2, 2)], mode="reflect")
                                            [:, 2 - dy: 2 - dy + 16, 2 - dx: 2 - dx + 16])]
            assert len(candidates) == 1


def test_color_ops_keep_their_invariants():
    x = smooth_images()
    luma = lambda t: t.mean(1)  # projection onto the gray axis (up to a constant)
    chroma = lambda t: t - t.mean(1, keepdim=True)
    per_image = lambda t: t.flatten(1)

    out = only("brightness")(x, Rng())
    offset = per_image(out - x)
    torch.testing.assert_close(offset, offset[:, :1].expand_as(offset))
    out = only("contrast")(x, Rng())
    ratio = per_image(out)[:, :1] / per_image(x)[:, :1]
    torch.testing.assert_close(per_image(out), per_image(x) * ratio)
    out = only("lumaflip")(x, Rng())
    torch.testing.assert_close(chroma(out), chroma(x))
    flipped = (luma(out) - luma(x)).flatten(1).abs().amax(1) > 1e-4
    torch.testing.assert_close(luma(out)[flipped], -luma(x)[flipped])
    assert 0 < flipped.sum() < len(x)  # a luma flip happens with probability 1/2 when enabled
    out = only("hue")(x, Rng())
    torch.testing.assert_close(luma(out), luma(x))
    torch.testing.assert_close(chroma(out).norm(dim=1), chroma(x).norm(dim=1))
    out = only("saturation")(x, Rng())
    torch.testing.assert_close(luma(out), luma(x))
    c_out, c_in = per_image(chroma(out)), per_image(chroma(x))
    scale = (c_out * c_in).sum(1, keepdim=True) / c_in.square().sum(1, keepdim=True)  # least squares
    torch.testing.assert_close(c_out, c_in * scale)
    assert (scale - 1).abs().max() > 0.1


def test_resampling_geometry():
    x = smooth_images(n=2, size=32)
    f = AugmentPipe().resample_filter
    identity = resample(x, torch.eye(3).repeat(2, 1, 1), f)
    torch.testing.assert_close(identity[..., 8:-8, 8:-8], x[..., 8:-8, 8:-8], atol=4e-3, rtol=0)
    torch.testing.assert_close(identity, x, atol=0.03, rtol=0)  # mirrored borders bend a periodic image
    # A quarter turn by the matrix path matches the exact one on band-limited images.
    quarter = resample(x, _rotation_matrix(torch.full((2,), math.pi / 2)), f)
    turned = [torch.rot90(x, k, dims=(2, 3)) for k in (1, 3)]
    assert min((quarter - t)[..., 8:-8, 8:-8].abs().max() for t in turned) < 4e-3


class Constant:
    """A RandomSource whose every draw is one number (rand -> u, randn -> z): at p = 1 each
    geometric op is then applied with a parameter the test knows."""

    def __init__(self, u, z):
        self.u, self.z = u, z

    def rand(self, *shape):
        return torch.full(shape, float(self.u))

    def randn(self, *shape):
        return torch.full(shape, float(self.z))


def band_limited(x, y):
    """A smooth, asymmetric image as a function of [-1, 1] coordinates (x right, y down): two
    plane waves of under one cycle per unit and an off-center blob, far below the band limit
    at 32 px, so it can be evaluated exactly at any transformed coordinate."""
    waves = 0.4 * torch.sin(2 * math.pi * (0.6 * x + 0.3 * y) + 0.4) + 0.3 * torch.cos(2 * math.pi * (-0.4 * x + 0.7 * y) + 1.1)
    return waves + 0.3 * torch.exp(-((x - 0.25) ** 2 + (y + 0.15) ** 2) / (2 * 0.3**2))


def rotation(angle):
    c, s = math.cos(angle), math.sin(angle)
    return lambda x, y: (c * x - s * y, s * x + c * y)


U, Z = 13 / 24, 1.3  # the Constant draws: angle (2u - 1) pi = pi / 12, z = 1.3 standard deviations
# Each op's inverse map (output -> input coordinates) for the draws U, Z, from the paper's
# strengths (log2 std 0.2 for both scalings, translation std 0.125 image widths = 0.25 units).
# Rotation turns twice (before and after aniso), both times by the same drawn angle here.
KNOWN_INVERSE = {
    "scale": lambda x, y: (x / 2 ** (0.2 * Z), y / 2 ** (0.2 * Z)),
    "rotate": rotation(-2 * (2 * U - 1) * math.pi),
    "aniso": lambda x, y: (x / 2 ** (0.2 * Z), y * 2 ** (0.2 * Z)),
    "xfrac": lambda x, y: (x - 0.25 * Z, y - 0.25 * Z),
}


@pytest.mark.parametrize("op", GEOMETRIC_OPS)
def test_geometric_ops_match_the_known_transform(op):
    """Forcing an op's parameter, the pipeline's output is the test image evaluated at the
    analytically transformed coordinates, in the interior (away from mirrored borders)."""
    size = 32
    centers = (torch.arange(size) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(centers, centers, indexing="ij")
    image = band_limited(x, y).expand(1, 3, size, size)
    out = only(op)(image, Constant(U, Z))
    sx, sy = KNOWN_INVERSE[op](x, y)
    interior = (torch.stack([x, y, sx, sy]).abs() < 0.6).all(0)
    error = (out - band_limited(sx, sy))[..., interior]
    assert error.abs().max() < 0.01


def test_geometric_strengths_follow_the_paper():
    """At p = 1, over many draws: log2 of the isotropic scale and of the anisotropic x scale
    are N(0, 0.2) (y scale = 1 / x scale); the rotation is uniform on the full circle; the
    fractional translation is N(0, 0.125) image widths per axis. Tolerances: 5 standard errors."""
    n = 20_000
    se_mean, se_std = 1 / math.sqrt(n), 1 / math.sqrt(2 * (n - 1))  # per unit standard deviation

    def forward(op):  # the transforms as applied (image -> output), the inverse of what is drawn
        g_inv, active = only(op).geometric_transform(n, Rng(1))
        assert active.all()
        return torch.linalg.inv(g_inv.double())

    def assert_normal(t, std):
        assert abs(t.mean()) < 5 * std * se_mean and abs(t.std() - std) < 5 * std * se_std

    scale = forward("scale")
    torch.testing.assert_close(scale[:, 1, 1], scale[:, 0, 0])
    assert_normal(scale[:, 0, 0].log2(), 0.2)
    aniso = forward("aniso")
    torch.testing.assert_close(aniso[:, 1, 1], 1 / aniso[:, 0, 0])
    assert_normal(aniso[:, 0, 0].log2(), 0.2)
    shift = forward("xfrac")[:, :2, 2] / 2  # [-1, 1] units -> image widths
    assert_normal(shift[:, 0], 0.125)
    assert_normal(shift[:, 1], 0.125)
    assert abs(np.corrcoef(shift.T.numpy())[0, 1]) < 5 * se_mean
    turn = forward("rotate")
    torch.testing.assert_close(turn[:, :2, :2] @ turn[:, :2, :2].transpose(1, 2), torch.eye(2, dtype=torch.float64).expand(n, 2, 2),
                               atol=1e-6, rtol=0)
    angle = torch.atan2(turn[:, 1, 0], turn[:, 0, 0])
    uniform_cdf = (angle.sort().values + math.pi) / (2 * math.pi)
    ks = (uniform_cdf - torch.arange(1, n + 1) / n).abs().max()  # Kolmogorov-Smirnov statistic
    assert ks < 1.95 / math.sqrt(n)  # its 0.1% critical value


@pytest.mark.parametrize("op", GEOMETRIC_OPS)
def test_each_geometric_op_is_applied_with_probability_p(op):
    """The fraction of images an op moves is p (for rotate: either of its two turns)."""
    n, p = 20_000, 0.3
    _, active = only(op, p).geometric_transform(n, Rng(2))
    assert abs(active.float().mean() - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_augmentations_are_differentiable():
    x = smooth_images().requires_grad_(True)
    AugmentPipe("fixed:0.5")(x, Rng()).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_p_controller():
    pipe = AugmentPipe("ada", target=0.6, speed_kimg=1)
    pipe.adjust(rt=0.9, nimg=100)
    assert math.isclose(pipe.p, 0.1)
    pipe.adjust(rt=0.2, nimg=50)
    assert math.isclose(pipe.p, 0.05)
    pipe.adjust(rt=0.0, nimg=1000)
    assert pipe.p == 0.0
    pipe.adjust(rt=1.0, nimg=5000)
    assert pipe.p == 1.0
    fixed = AugmentPipe("fixed:0.3")
    fixed.adjust(rt=1.0, nimg=10_000)
    assert fixed.p == 0.3
    assert parse_mode("fixed:0.25") == ("fixed", 0.25)
    for bad in ("fixed", "fixed:2", "adaptive", "fixed:x"):
        with pytest.raises(UserError):
            parse_mode(bad)
    with pytest.raises(UserError, match="unknown augmentation"):
        AugmentPipe(ops=("cutout",))


def tiny_objective(**sets):
    torch.manual_seed(0)
    config = make_config(SPEC, "data", 16, "tiny", {"batch": 8, "ada_kimg": 0.5, **sets}, seed=0)
    model = StyleGAN2(config.model_config)
    return model, SPEC.objective(model, config.objective_config, TrainContext(torch.device("cpu")))


def test_p_rises_when_d_overfits_a_tiny_set():
    """8 real images shown again and again: D soon calls all of them real (r_t -> 1 > 0.6)."""
    _, objective = tiny_objective()
    real = smooth_images(8, 16)
    ps = []
    for step in range(20):
        ps.append(objective.train_step(real, step)["ada_p"].item())
    assert ps[0] == 0 and ps[-1] > 0.05
    assert all(b >= a for a, b in zip(ps, ps[1:]))


def test_p_stays_zero_when_d_cannot_tell_real_from_fake():
    """"Real" images drawn fresh from the frozen generator itself: real and fake have one
    distribution, so D's signs on reals stay near a coin flip (r_t ~ 0 < 0.6) and p stays 0."""
    model, objective = tiny_objective(g_lr=0.0, pl_weight=0.0)
    signs = []
    for step in range(16):
        with torch.no_grad():
            real = objective.synthesize(objective.generate_ws(8))
        out = objective.train_step(real, step)
        signs += [out["ada_rt"].item()] if "ada_rt" in out else []
        assert out["ada_p"].item() == 0.0
    assert max(signs) < 0.6
