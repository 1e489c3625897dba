"""EQ-T, EQ-T_frac and EQ-R: the image-space references against independent computations,
the metrics on exactly equivariant and non-equivariant toy generators, a tiny StyleGAN3-T
against the same network with naive resampling, and the error path through the CLI."""

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from animegen.cli import main
from animegen.data.synth import synthesize_dataset
from animegen.errors import UserError
from animegen.metrics import evaluate_generator
from animegen.metrics.equivariance import (EQ_METRICS, PSNR_CAP, equivariance, fractional_translate, integer_translate,
                                           psnr, rotate)
from animegen.models.base import Capabilities, Model, Noise
from animegen.models.stylegan3 import content_transform
from animegen.training.config import make_config
from animegen.training.loop import Target, train
from animegen.training.objectives.stylegan3 import SPEC_T

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class ToyConfig:
    resolution: int = 32


class PlaneWaves(Model):
    """Per seed, a random sum of plane waves (frequencies below `max_freq` cycles per pixel)
    evaluated at the inverse-transformed pixel centres: exactly equivariant to translation
    and rotation. `sticky` adds a fixed pattern glued to the pixel grid, which is not."""

    config_class = ToyConfig
    capabilities = Capabilities(input_transform=True)

    def __init__(self, config, max_freq=0.2, sticky=0.0, waves=16):
        super().__init__(config)
        g = torch.Generator().manual_seed(0)
        radius = max_freq * torch.rand(3, waves, generator=g, dtype=torch.float64).sqrt()
        angle = 2 * math.pi * torch.rand(3, waves, generator=g, dtype=torch.float64)
        self.freqs = torch.stack([radius * angle.cos(), radius * angle.sin()], -1)  # (3, waves, xy)
        self.pattern = sticky * torch.randn(3, config.resolution, config.resolution, generator=g, dtype=torch.float64)

    @property
    def device(self):
        return torch.device("cpu")

    def raw_sample(self, noise, transform=None):
        r = self.resolution
        amplitude = noise.randn(3, self.freqs.shape[1]).double() * 0.1
        phase = noise.randn(3, self.freqs.shape[1]).double()
        m = (torch.eye(3) if transform is None else transform).double().expand(len(noise), 3, 3)
        c = (torch.arange(r, dtype=torch.float64) - (r - 1) / 2) / r  # pixel centres in image widths
        py, px = torch.meshgrid(c, c, indexing="ij")
        # The transform maps output to input coordinates: q = A p + b, back in pixels.
        qx, qy = ((m[:, k, 0, None, None] * px + m[:, k, 1, None, None] * py + m[:, k, 2, None, None]) * r
                  for k in (0, 1))
        arg = 2 * math.pi * (qx[..., None, None] * self.freqs[..., 0] + qy[..., None, None] * self.freqs[..., 1])
        waves = amplitude[:, None, None] * torch.cos(arg + phase[:, None, None])  # (N, H, W, 3, waves)
        return (waves.sum(-1).permute(0, 3, 1, 2) + self.pattern).float()


class Recording(PlaneWaves):
    """PlaneWaves that records, per call, the transform each image was rendered with (None:
    the untransformed render)."""

    def __init__(self, config):
        super().__init__(config)
        self.calls = []

    def raw_sample(self, noise, transform=None):
        self.calls.append(None if transform is None else transform.expand(len(noise), 3, 3).clone())
        return super().raw_sample(noise, transform)


# ---------------------------------------------------------------- references
def test_psnr_formula_and_cap():
    assert psnr(0.04) == pytest.approx(20.0)  # 10 log10(2^2 / 0.04)
    assert psnr(4e-6) == pytest.approx(60.0)
    assert psnr(0.0) == PSNR_CAP


def test_integer_translate_against_numpy():
    x = torch.randn(2, 3, 7, 9)
    out, mask = integer_translate(x, 2, -3)
    want = np.zeros((2, 3, 7, 9), np.float32)
    want[:, :, 0:4, 2:9] = x.numpy()[:, :, 3:7, 0:7]
    np.testing.assert_array_equal(out.numpy(), want)
    assert mask.shape == (1, 1, 7, 9) and mask.sum() == 4 * 7 and mask[0, 0, 0:4, 2:].all()


def test_fractional_translate_by_whole_pixels_is_the_integer_shift():
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    frac, frac_mask = fractional_translate(x, 3.0, -2.0)
    whole, whole_mask = integer_translate(x, 3, -2)
    keep = frac_mask.bool().expand_as(x)
    assert frac_mask.sum() > 0 and (frac_mask <= whole_mask).all()
    torch.testing.assert_close(frac[keep], whole[keep])


def wave(size, fx, fy, dx=0.0, dy=0.0, degrees=0.0):
    """cos(2 pi f . q) with q the pixel centres moved back by (dx, dy) pixels / turned back."""
    c = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    py, px = torch.meshgrid(c - dy, c - dx, indexing="ij")
    a = math.radians(degrees)
    qx, qy = math.cos(a) * px - math.sin(a) * py, math.sin(a) * px + math.cos(a) * py
    return torch.cos(2 * math.pi * (fx * qx + fy * qy))[None, None]


def test_fractional_translate_of_a_band_limited_wave():
    """Lanczos-3's passband is not flat: about 3e-3 error at 0.03-0.08 cycles/pixel, which
    bounds EQ-T_frac near 55-60 dB for smooth content (as in the paper's reference)."""
    x = wave(32, 0.07, -0.04)
    out, mask = fractional_translate(x, 2.3, -1.6)
    want = wave(32, 0.07, -0.04, dx=2.3, dy=-1.6)
    assert mask.sum() > 300
    assert ((out - want).abs() * mask).max() < 5e-3


def test_rotation_reference():
    # A quarter turn maps the pixel grid onto itself: torch.rot90 (counterclockwise as displayed).
    x = wave(24, 0.1, 0.05) + wave(24, -0.04, 0.12)
    out, mask = rotate(x, 90.0)
    keep = mask.bool().expand_as(x)
    assert mask.sum() == 12 * 12
    torch.testing.assert_close(out[keep], torch.rot90(x, 1, dims=(-2, -1))[keep], atol=1e-4, rtol=0)
    # Any angle: the analytic rotated wave, within the windowed filter's passband error.
    out, mask = rotate(wave(40, 0.1, 0.05), 33.0)
    want = wave(40, 0.1, 0.05, degrees=33.0)
    assert mask.sum() > 600
    assert ((out - want).abs() * mask).max() < 6e-3


# ---------------------------------------------------------------- the metrics
def test_exactly_equivariant_toy_scores_the_maximum():
    """EQ-T is exact (the cap); EQ-T_frac and EQ-R are bounded by how well their windowed-sinc
    references resample a signal up to 0.2 cycles/pixel (measured: 56 and 61 dB)."""
    scores = equivariance(PlaneWaves(ToyConfig(32)), num=16, batch_size=4)
    assert scores["eqt"] == PSNR_CAP
    assert scores["eqt_frac"] > 52 and scores["eqr"] > 55, scores


def test_pixel_glued_toy_scores_low():
    """The same waves plus a fixed pattern of std 0.1 (measured: about 23 dB on all three)."""
    scores = equivariance(PlaneWaves(ToyConfig(32), sticky=0.1), num=16, batch_size=4)
    assert all(scores[m] < 30 for m in EQ_METRICS), scores


def naive_resampling(model):
    """The same network with nearest-neighbour upsampling and plain strided downsampling."""
    for layer in model.synthesis.layers:
        layer.up_filter = torch.full((layer.up,), 1.0 / layer.up)
        layer.down_filter = torch.ones(1)
    return model


def tiny_stylegan3_t():
    torch.manual_seed(0)
    config = make_config(SPEC_T, "data", 32, "tiny", {}, seed=0)
    return SPEC_T.model(config.model_config).eval()


def test_alias_free_filters_keep_stylegan3_t_equivariant():
    """tiny StyleGAN3-T at 32 px, random init: measured EQ-T 78 dB against 31 dB with naive
    resampling (16 latents in 4 transforms)."""
    model = tiny_stylegan3_t()
    alias_free = equivariance(model, ("eqt",), num=16, batch_size=2)["eqt"]
    naive = equivariance(naive_resampling(model), ("eqt",), num=16, batch_size=2)["eqt"]
    assert alias_free > 65 and naive < 40 and alias_free - naive > 30, (alias_free, naive)


def test_one_transform_per_four_latents_whatever_the_batch():
    """10 latents: 3 transforms (latents 0-3, 4-7, 8-9) for every rendering batch, the same
    ones, hence the same score; recorded in the result."""
    transforms, scores = [], []
    for batch_size in (1, 3, 10):
        model = Recording(ToyConfig(32))
        result = equivariance(model, ("eqt_frac",), num=10, batch_size=batch_size)
        assert result["eq_transforms"] == 3 and result["eq_images_per_transform"] == 4 and result["eq_images"] == 10
        per_image = torch.cat([t for t in model.calls if t is not None])
        assert len(per_image) == 10 and len(torch.unique(per_image, dim=0)) == 3
        for group in (per_image[0:4], per_image[4:8], per_image[8:10]):
            assert (group == group[0]).all()
        transforms.append(per_image)
        scores.append(result["eqt_frac"])
    for other in transforms[1:]:
        torch.testing.assert_close(other, transforms[0], rtol=0, atol=0)
    assert scores[1] == pytest.approx(scores[0], abs=1e-6) and scores[2] == pytest.approx(scores[0], abs=1e-6)


def test_all_three_metrics_share_one_untransformed_render_per_batch():
    """Through the metrics registry, as `animegen eval --metrics eqt,eqt_frac,eqr` calls it."""
    model = Recording(ToyConfig(32))
    result = evaluate_generator(iter(()), real="unused", metrics=("eqt", "eqt_frac", "eqr"), num=8, batch_size=4,
                                generator=model)
    assert [t is None for t in model.calls] == [True, False, False, False] * 2
    assert set(EQ_METRICS) <= set(result) and result["eq_transforms"] == 2


def test_stylegan3_is_measured_on_its_raw_output():
    """The generator's output scaled by 10 (its raw output then leaves [-1, 1]) must score
    exactly 20 dB lower: the error scales with the output. Measured on clamped images, the
    scaled generator's errors would be bounded by the clamp instead."""
    model = tiny_stylegan3_t()
    before = equivariance(model, ("eqt", "eqr"), num=4, batch_size=4)
    model.synthesis.output_scale *= 10
    assert model.raw_sample(Noise(range(4))).abs().max() > 1.5
    after = equivariance(model, ("eqt", "eqr"), num=4, batch_size=4)
    assert before["eq_output"] == "raw"
    for name in ("eqt", "eqr"):
        assert after[name] == pytest.approx(before[name] - 20, abs=1e-3), (name, before, after)


def test_stylegan3_renders_a_transform_per_image():
    """The metric renders a batch with one transform per image; that equals rendering each
    image alone with its own transform."""
    model = tiny_stylegan3_t()
    matrices = torch.stack([content_transform((0.1, -0.05), 30.0), content_transform((-0.2, 0.0), -90.0)])
    with torch.no_grad():
        batched = model.raw_sample(Noise([5, 6]), matrices)
        alone = torch.cat([model.raw_sample(Noise([seed]), m) for seed, m in zip([5, 6], matrices)])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
    assert not torch.allclose(batched[0], model.raw_sample(Noise([5]), matrices[1])[0], atol=1e-3)


def test_bad_requests():
    with pytest.raises(UserError, match="unknown equivariance"):
        equivariance(PlaneWaves(ToyConfig(32)), ("eqx",))

    class Fixed(Model):
        config_class = ToyConfig

        def sample(self, noise):
            return torch.zeros(len(noise), 3, 32, 32)

    with pytest.raises(UserError, match="no input transform"):
        equivariance(Fixed(ToyConfig(32)), num=2)


def test_eval_command(tmp_path):
    """`animegen eval RUN --metrics eqt,eqr --json` prints both; a generator without an input
    transform gets one line on stderr and exit code 2."""
    data = tmp_path / "faces"
    synthesize_dataset(data, count=20, resolution=16, seed=0, test_fraction=0.2)
    sets = {"batch": 4, "log_every": "1", "sample_every": "0", "ckpt_every": "1", "grid_seeds": 4}
    for family in ("stylegan3-t", "stylegan2"):
        train(str(tmp_path / family), model=family, data=str(data), sets=sets, target=Target(steps=1),
              device="cpu", seed=0, echo=lambda line: None)
    runner = CliRunner()
    ok = runner.invoke(main, ["eval", str(tmp_path / "stylegan3-t"), "--metrics", "eqt,eqr", "--num", "4",
                              "--batch-size", "4", "--device", "cpu", "--json"])
    assert ok.exit_code == 0, ok.output + ok.stderr
    result = json.loads(ok.stdout)
    assert 0 < result["eqt"] <= PSNR_CAP and 0 < result["eqr"] <= PSNR_CAP
    events = [json.loads(line) for line in (tmp_path / "stylegan3-t" / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "eval" and events[-1]["eqt"] == result["eqt"] and events[-1]["step"] == 1
    assert events[-1]["protocol"] == result["protocol"]
    bad = runner.invoke(main, ["eval", str(tmp_path / "stylegan2"), "--metrics", "eqt", "--num", "4",
                               "--device", "cpu"])
    assert bad.exit_code == 2
    assert bad.stderr.count("\n") == 1 and "no input transform" in bad.stderr and "Traceback" not in bad.stderr
