"""ADA: each augmentation's defining property, identity at p = 0, the p controller, and p
rising (or not) inside real StyleGAN2 training at 16 px."""

import math

import numpy as np
import pytest
import torch

from animegen.errors import UserError
from animegen.models.stylegan2 import StyleGAN2
from animegen.training.augment import OPS, AugmentPipe, _rotation_matrix, parse_mode, resample
from animegen.training.config import make_config
from animegen.training.objectives.stylegan2 import SPEC
from animegen.training.objective import TrainContext


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
