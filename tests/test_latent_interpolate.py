"""Interpolation videos and style-mixing figures (animegen.latent.interpolate, media): keyframes
are `sample`'s images bit for bit, paths keep Gaussian norms and close when looping, style
mixing takes exactly the chosen style inputs, and every refusal is one clear line."""

import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy.interpolate import CubicSpline

from animegen.cli import main
from animegen.errors import UserError
from animegen.generate import Steering, load_generator, write_samples
from animegen.latent import media
from animegen.latent.directions import Direction, save_directions
from animegen.latent.interpolate import (Interpolation, draw_each, frame_batches, interpolation_frames, slerp,
                                         slerp_path, spline, spline_curvature, style_mix_figure, write_interpolation,
                                         write_style_mix)
from animegen.models import registry
from animegen.training.loop import Target, train

FAMILIES = registry.names()
W_FAMILIES = registry.families_that(lambda can: "w" in can.spaces)  # z-space paths through W and style mixing
SMALL_RUN = {"batch": 4, "sample_every": "0", "tensorboard": False, "grid_seeds": 4}
SMALLER = {"ddpm": {"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": [8], "num_groups": 4,
                    "time_embed_dim": 16, "timesteps": 50},
           "edm": {"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": [8], "num_groups": 4,
                   "time_embed_dim": 16}}
OPTIONS = {"stylegan2": {"noise_mode": "random", "truncation": 0.8}, "stylegan3-t": {"translate": "0.1,0", "rotate": 5.0},
           "ddpm": {"sampler": "ddim", "eta": 0.0, "steps": 4}, "edm": {"steps": 3}}
SEEDS = [3, 7, 11]


@pytest.fixture(scope="module")
def trained(faces16, tmp_path_factory):
    """A run of each family trained one step, once per module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    for family in FAMILIES:
        train(str(root / family), model=family, data=str(faces16), sets={**SMALL_RUN, **SMALLER.get(family, {})},
              target=Target(steps=1), device="cpu", echo=lambda _: None)
    yield root
    torch.set_num_threads(threads)


def sampled(run, seed, out, options, steering=None):
    """`animegen sample --seed SEED --count 1`'s image, read back from its PNG."""
    write_samples(str(run), str(out), 1, seed=seed, options=options, device="cpu", steering=steering)
    return np.asarray(Image.open(out / f"seed{seed:06d}.png"))


def frames_of(run, options, frames=3, loop=False, space=None, edits=(), rows=(SEEDS,)):
    model, _ = load_generator(run, "cpu")
    return interpolation_frames(model, [list(r) for r in rows], frames, loop, space,
                                model.resolve_sample_options(options), batch_size=4, edits=edits)


@pytest.mark.parametrize("family", FAMILIES)
def test_keyframes_are_the_images_sample_makes(family, trained, tmp_path):
    options = OPTIONS.get(family, {})
    video = frames_of(trained / family, options)
    assert video.shape == (1, 7, 16, 16, 3)
    for k, seed in enumerate(SEEDS):
        np.testing.assert_array_equal(video[0, 3 * k], sampled(trained / family, seed, tmp_path / f"s{seed}", options))
    assert not np.array_equal(video[0, 1], video[0, 0]) and not np.array_equal(video[0, 1], video[0, 3])


@pytest.mark.parametrize("family", W_FAMILIES)
def test_stylegan_z_space_keyframes_and_loop(family, trained, tmp_path):
    options = OPTIONS.get(family, {})
    video = frames_of(trained / family, options, frames=2, loop=True, space="z", rows=(SEEDS, [5, 6, 8]))
    assert video.shape == (2, 6, 16, 16, 3)  # a loop of 3 transitions, no repeated first frame
    np.testing.assert_array_equal(video[1, 4], sampled(trained / family, 8, tmp_path / "s8", options))


def test_edits_apply_to_every_frame(trained, tmp_path):
    run = trained / "stylegan2"
    model, _ = load_generator(run, "cpu")
    vector = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(0)), dim=0)
    direction = Direction("d0", vector, "test", (0, model.num_ws - 1), 2.0, {})
    save_directions(tmp_path / "dirs.safetensors", model, [direction])
    options = OPTIONS["stylegan2"]
    edited = frames_of(run, options, edits=[(direction, 1.5)])
    plain = frames_of(run, options)
    steering = Steering(directions=[str(tmp_path / "dirs.safetensors")], edits=["d0=1.5"])
    np.testing.assert_array_equal(edited[0, 6], sampled(run, 11, tmp_path / "s11", options, steering))
    assert not np.array_equal(edited[0, 1], plain[0, 1])


def test_slerp_keeps_gaussian_norms_and_its_ends():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 512, generator=g), torch.randn(1, 512, generator=g)
    t = torch.linspace(0, 1, 11)
    path = slerp(a.expand(11, -1), b.expand(11, -1), t)
    assert torch.equal(path[0], a[0]) and torch.equal(path[-1], b[0])
    np.testing.assert_allclose(path.norm(dim=1), torch.lerp(a.norm(), b.norm(), t), rtol=1e-5)
    assert (a + b).norm() / 2 < 0.8 * a.norm()  # what a straight line would lose midway
    same = slerp(a, a, torch.tensor([0.5]))  # a zero angle moves nowhere
    torch.testing.assert_close(same, a)


@pytest.mark.parametrize("loop, condition", [(False, "natural"), (True, "periodic")])
def test_spline_is_scipy_cubic_spline_and_a_loop_closes(loop, condition):
    keys = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(1))
    curvature = spline_curvature(keys, loop)
    times = torch.linspace(0, 5 if loop else 4, 41, dtype=torch.float64)
    ys = torch.cat([keys, keys[:1]]) if loop else keys  # scipy's periodic spline repeats the first point
    reference = CubicSpline(np.arange(len(ys)), ys.double().numpy(), bc_type=condition)(times.numpy())
    np.testing.assert_allclose(spline(keys, curvature, times, loop).numpy(), reference, atol=1e-5)
    at_keys = spline(keys, curvature, torch.arange(5, dtype=torch.float64), loop)
    assert torch.equal(at_keys, keys)
    if loop:
        end = torch.tensor([5.0], dtype=torch.float64)
        assert torch.equal(spline(keys, curvature, end, loop)[0], keys[0])
        assert torch.equal(slerp_path(keys, end, loop)[0], keys[0])


def test_stylegan2_noise_maps_are_slerped_too(trained):
    model, _ = load_generator(trained / "stylegan2", "cpu")
    keys = draw_each(model, [1, 2], {"noise_mode": "random"})
    halfway = Interpolation(keys, "w", loop=False).at(torch.tensor([0.5], dtype=torch.float64))
    assert len(halfway["noise"]) == len(keys["noise"]) == len(model.synthesis.convs)
    for drawn, between in zip(keys["noise"], halfway["noise"]):
        torch.testing.assert_close(between, slerp(drawn[:1], drawn[1:], torch.tensor([0.5])))


def test_frame_times_and_keyframes_rendered_alone():
    keys = {"z": torch.randn(3, 4), "w": torch.randn(3, 2, 4)}
    assert Interpolation(keys, "w", loop=False).frame_times(4).tolist()[-2:] == [1.75, 2.0]
    assert len(Interpolation(keys, "z", loop=True).frame_times(4)) == 12
    # floating-point results change with the batch size: a keyframe is rendered as `sample --count 1` renders it
    batches = [(b.start, b.stop) for b in frame_batches(9, 4, batch_size=2)]
    assert batches == [(0, 1), (1, 3), (3, 4), (4, 5), (5, 7), (7, 8), (8, 9)]


@pytest.mark.parametrize("options", [{"sampler": "ddpm", "steps": 50}, {"sampler": "ddim", "eta": 0.5}])
def test_ancestral_ddpm_is_refused(options, trained, tmp_path):
    with pytest.raises(UserError, match="deterministic sampler"):
        write_interpolation(str(trained / "ddpm"), str(tmp_path / "a.png"), "1,2", frames=2, options=options, device="cpu")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("family", registry.families_that(lambda can: can.style_mixing))
def test_style_mixing_takes_the_column_styles(family, trained, tmp_path):
    run, options = trained / family, OPTIONS.get(family, {})
    model, _ = load_generator(run, "cpu")
    options = model.resolve_sample_options(options)
    everything = style_mix_figure(model, [1, 2], [4, 5, 6], "all", options, batch_size=1)  # cells alone: exact
    assert everything.shape == (3, 4, 16, 16, 3) and (everything[0, 0] == 255).all()
    column = sampled(run, 5, tmp_path / "s5", options)
    row = sampled(run, 2, tmp_path / "s2", options)
    np.testing.assert_array_equal(everything[0, 2], column)
    np.testing.assert_array_equal(everything[2, 0], row)
    np.testing.assert_array_equal(everything[2, 2], column)  # every style input from the column seed
    coarse = style_mix_figure(model, [2], [5], "coarse", options)
    assert not np.array_equal(coarse[1, 1], column) and not np.array_equal(coarse[1, 1], row)
    last = model.num_ws - 1
    np.testing.assert_array_equal(style_mix_figure(model, [2], [5], f"0-{last}", options)[1, 1], column)


@pytest.mark.parametrize("layers", ["3-1", "99", "bogus", ""])
def test_style_mixing_refuses_empty_and_invalid_ranges(layers, trained, tmp_path):
    with pytest.raises(UserError, match="layer range"):
        write_style_mix(str(trained / "stylegan2"), str(tmp_path / "m.png"), "1,2", "3", layers=layers, device="cpu")
    assert not list(tmp_path.iterdir())


def test_style_mix_cli_and_its_refusal_for_other_families(trained, tmp_path):
    out = tmp_path / "mix.png"
    result = CliRunner().invoke(main, ["style-mix", str(trained / "stylegan2"), "--rows", "1,2,3", "--cols", "4,5",
                                       "--layers", "fine", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0 and result.stdout.startswith(f"{out}: 3 x 2 style mixes"), result.output
    assert Image.open(out).size == (2 + 3 * 130, 2 + 4 * 130)  # 16 px faces shown at 128 px by default
    result = CliRunner().invoke(main, ["style-mix", str(trained / "vae"), "--rows", "1", "--cols", "2",
                                       "--out", str(tmp_path / "vae.png"), "--device", "cpu"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "stylegan2, stylegan3-t" in result.stderr
    assert not (tmp_path / "vae.png").exists()


def test_gif_and_png_outputs(trained, tmp_path):
    gif = tmp_path / "walk.gif"
    result = CliRunner().invoke(main, ["interpolate", str(trained / "dcgan"), "--seeds", "1,2,3;4,5,6", "--frames", "4",
                                       "--loop", "--fps", "25", "--out", str(gif), "--device", "cpu"])
    assert result.exit_code == 0 and result.stdout == f"{gif}: 2 interpolation(s) of 12 frames of 128 px in z from " \
        f"{trained / 'dcgan' / 'checkpoints' / 'step-00000001'}\n", result.output
    with Image.open(gif) as image:
        assert image.n_frames == 12 and image.info["duration"] == 40 and image.size == (2 + 2 * 130, 2 + 130)
    png = tmp_path / "walk.png"
    info = write_interpolation(str(trained / "vae"), str(png), "1,2;3,4;5,6", frames=5, device="cpu", scale=1)
    assert info["frames"] == 6 and Image.open(png).size == (2 + 6 * 18, 2 + 3 * 18)


@pytest.mark.parametrize("seeds, kwargs, message", [
    ("1", {}, "2 to 1000 comma-separated seeds"),
    ("1,2;3,4,5", {}, "as many seeds"),
    ("1,x", {}, "comma-separated seeds"),
    ("1,2", {"frames": 0}, "--frames must be an integer from 1 to 1000"),
    ("1,2", {"frames": 1001}, "--frames must be an integer from 1 to 1000"),
    ("1,2", {"fps": float("nan")}, "--fps must be a number"),
    ("1,2,3", {"frames": 600, "out": "big.png"}, "a PNG of 1201 frames is too large"),
    ("1,2", {"out": "a.jpg"}, "write a .png"),
    ("1,2", {"space": "w"}, "--space w: vae has no w space"),
])
def test_bad_requests_are_refused_in_one_line(seeds, kwargs, message, trained, tmp_path):
    out = str(tmp_path / kwargs.pop("out", "a.gif"))
    with pytest.raises(UserError, match=message) as error:
        write_interpolation(str(trained / "vae"), out, seeds, device="cpu", **{"frames": 2, **kwargs})
    assert "\n" not in str(error.value) and not list(tmp_path.iterdir())


def test_mp4_without_imageio_says_how_to_get_it(trained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio", None)  # `import imageio` now raises ImportError
    monkeypatch.setitem(sys.modules, "imageio.v2", None)
    result = CliRunner().invoke(main, ["interpolate", str(trained / "vae"), "--seeds", "1,2", "--out",
                                       str(tmp_path / "a.mp4"), "--device", "cpu"])
    assert result.exit_code == 2 and result.stderr == f"error: {media.MP4_MISSING}\n"
    assert not list(tmp_path.iterdir())


def test_mp4_frames(tmp_path):
    pytest.importorskip("imageio.v2")
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    frames = [np.full((16, 16, 3), 16 * i, np.uint8) for i in range(10)]
    media.write_video(tmp_path / "a.mp4", frames, fps=10)
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "a.mp4")) == (10, 1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]


@pytest.mark.parametrize("command, family, args", [
    ("interpolate", "vae", ["--frames", "x"]),
    ("interpolate", "vae", ["--fps", "inf"]),
    ("interpolate", "vae", ["--seeds", ""]),
    ("interpolate", "vae", ["--seeds", "1;2"]),
    ("interpolate", "vae", ["--seeds", "-1,2"]),
    ("interpolate", "vae", ["--seeds", "1,99999999999999"]),
    ("interpolate", "vae", ["--out", "."]),
    ("interpolate", "vae", ["--batch-size", "0"]),
    ("interpolate", "vae", ["--checkpoint", "7"]),
    ("interpolate", "vae", ["--truncation", "0.5"]),
    ("interpolate", "vae", ["--edit", "nope=1"]),
    ("interpolate", "stylegan2", ["--truncation", "nan"]),
    ("style-mix", "stylegan2", ["--rows", ""]),
    ("style-mix", "stylegan2", ["--cols", "1,x"]),
    ("style-mix", "stylegan2", ["--out", "m.gif"]),
    ("style-mix", "stylegan2", ["--mix-seed", "3"]),
    ("style-mix", "stylegan3-t", ["--noise-mode", "const"]),
    ("style-mix", "stylegan2", ["--rows", ",".join(map(str, range(65)))]),
])
def test_cli_refusals_are_one_line_and_write_nothing(command, family, args, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {"interpolate": ["--seeds", "1,2", "--frames", "2", "--out", "a.gif"],
            "style-mix": ["--rows", "1,2", "--cols", "3", "--out", "m.png"]}[command]
    result = CliRunner().invoke(main, [command, str(trained / family), *base, "--device", "cpu", *args])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and result.stdout == "", result.output
    assert not list(tmp_path.iterdir())


def test_keyframes_from_latent_files_are_their_images(tmp_path, trained):
    """Two `sample --save-latents` folders as keyframes (as two projected faces would be): the
    first and last frames are those images, bit for bit."""
    run = trained / "stylegan2"
    runner = CliRunner()
    for seed in (3, 8):
        result = runner.invoke(main, ["sample", str(run), "--count", "1", "--seed", str(seed), "--out",
                                      str(tmp_path / f"s{seed}"), "--save-latents", "--device", "cpu"])
        assert result.exit_code == 0, result.output
    out = tmp_path / "walk.png"
    result = runner.invoke(main, ["interpolate", str(run), "--w", str(tmp_path / "s3" / "latents.npz"), "--w",
                                  str(tmp_path / "s8" / "latents.npz"), "--frames", "4", "--out", str(out),
                                  "--device", "cpu", "--scale", "1"])
    assert result.exit_code == 0, result.output
    strip, r = np.array(Image.open(out)), 16  # one row of frames, 2 px apart and around
    first, last = strip[2 : 2 + r, 2 : 2 + r], strip[2 : 2 + r, -2 - r : -2]
    assert np.array_equal(first, np.array(Image.open(tmp_path / "s3" / "seed000003.png")))
    assert np.array_equal(last, np.array(Image.open(tmp_path / "s8" / "seed000008.png")))
    both = runner.invoke(main, ["interpolate", str(run), "--seeds", "1,2", "--w", str(tmp_path / "s3" / "latents.npz"),
                                "--out", str(tmp_path / "x.gif")])
    assert both.exit_code == 2 and "one of them" in both.output
