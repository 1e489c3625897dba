"""Explicit latents in and out: every family renders exactly what its seeds draw, latent
files round-trip, bad files are refused with one line, and `sample` speaks all of it."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from animegen.cli import main
from animegen.errors import UserError
from animegen.generate import sample_batches
from animegen.latent import codes
from animegen.models import registry
from animegen.models.base import Noise
from animegen.training.config import make_config

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = registry.names()
DDIM = {"sampler": "ddim", "steps": 4}


def tiny_model(name: str, resolution: int = 16):
    torch.manual_seed(0)
    spec = registry.get(name)
    config = make_config(spec, "data", resolution, "tiny", {}, seed=0)
    model = spec.model(config.model_config).eval().requires_grad_(False)
    for name, parameter in model.named_parameters():
        if name.endswith("noise_strength"):  # zero at init: make the noise maps matter
            parameter.fill_(0.5)
    return model


def options_of(name: str) -> dict:
    return {"ddpm": DDIM, "edm": {"steps": 3}}.get(name, {})


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param, tiny_model(request.param)


def test_draw_then_render_is_sample(family):
    """`sample` is `render(draw(...))`, so images from explicit latents can equal seeded ones."""
    name, model = family
    options = model.resolve_sample_options(options_of(name))
    with torch.no_grad():
        direct = model.sample(Noise([3, 4]), **options)
        noise = Noise([3, 4])
        latents = model.draw(noise, **options)
        assert latents["z"].shape == (2, *model.z_shape)
        assert torch.equal(model.render(latents, noise, **options), direct)


def test_saved_latents_reproduce_the_images(family, tmp_path):
    name, model = family
    options = model.resolve_sample_options(options_of(name))
    seeds = [5, 6, 7]
    drawn = []
    images = torch.cat(list(sample_batches(model, seeds, 2, options, drawn=drawn)))
    path = codes.save_latents(tmp_path / "latents.npz", codes.join_latents(drawn), seeds, model, options)
    kinds = ("z", "w") if "w" in drawn[0] else ("z",)
    for kind in kinds:
        file = codes.load_latents(path, kind, model)
        assert file.seeds == seeds and len(file) == 3 and file.meta["family"] == name
        again = torch.cat(list(sample_batches(model, file.seeds, 2, options, given=file.given)))
        # Other seeds: the file alone (z or w, and the noise maps) makes the images.
        elsewhere = torch.cat(list(sample_batches(model, [100, 101, 102], 2, options, given=file.given)))
        assert torch.equal(again, images) and torch.equal(elsewhere, images), kind


def test_given_latents_replace_the_seeds(tmp_path):
    """A z saved under seed 1 and drawn again under seed 2 makes seed 1's image (DCGAN: z is all there is)."""
    model = tiny_model("dcgan")
    z = Noise([1]).randn(*model.z_shape)
    np.save(tmp_path / "z.npy", z.numpy())
    given = codes.load_latents(tmp_path / "z.npy", "z", model).given
    from_file = next(sample_batches(model, [2], 1, given=given))
    assert torch.equal(from_file, next(sample_batches(model, [1], 1)))
    assert not torch.equal(from_file, next(sample_batches(model, [2], 1)))


def test_w_files_in_nvidia_and_plain_shapes(tmp_path):
    model = tiny_model("stylegan3-t")
    w_dim, num_ws = model.mapping.w_avg.numel(), model.num_ws
    one_w = np.random.default_rng(0).standard_normal((2, w_dim)).astype(np.float32)
    np.save(tmp_path / "w.npy", one_w)
    np.savez(tmp_path / "projected_w.npz", w=np.repeat(one_w[:1, None], num_ws, axis=1))  # NVIDIA's projector output
    plain = codes.load_latents(tmp_path / "w.npy", "w", model).given["w"]
    nvidia = codes.load_latents(tmp_path / "projected_w.npz", "w", model).given["w"]
    assert plain.shape == (2, num_ws, w_dim) and torch.equal(plain[:, 0], plain[:, -1])
    assert torch.equal(nvidia[0], plain[0])


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 7), np.float32), r"shape \(2, 7\); this model needs N x 64"),
    (np.full((1, 64), np.nan, np.float32), "NaN or infinite"),
    (np.array([["a"] * 64]), "must be numbers"),
    (np.zeros((0, 64), np.float32), "0 latents"),
])
def test_bad_latent_arrays_are_refused(tmp_path, array, message):
    model = tiny_model("dcgan")
    assert model.z_shape == (64,)
    np.save(tmp_path / "z.npy", array)
    with pytest.raises(UserError, match=message):
        codes.load_latents(tmp_path / "z.npy", "z", model)


def test_latent_files_of_another_model_or_not_latents_are_refused(tmp_path):
    vae, sg2 = tiny_model("vae"), tiny_model("stylegan2")
    drawn = []
    list(sample_batches(sg2, [0], 1, drawn=drawn))
    path = codes.save_latents(tmp_path / "sg2.npz", drawn[0], [0], sg2, {})
    with pytest.raises(UserError, match="latents of a stylegan2 model; this run is vae"):
        codes.load_latents(path, "z", vae)
    with pytest.raises(UserError, match="vae has no w space"):
        codes.load_latents(path, "w", vae)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable"):
        codes.load_latents(tmp_path / "junk.npz", "z", sg2)
    np.savez(tmp_path / "seeds.npz", z=np.zeros((1, 64), np.float32), seeds=np.array([-1]))
    with pytest.raises(UserError, match="seeds must be 1 integers"):
        codes.load_latents(tmp_path / "seeds.npz", "z", sg2)
    np.savez(tmp_path / "maps.npz", z=np.zeros((1, 64), np.float32), noise_0=np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(UserError, match="noise maps of shapes"):
        codes.load_latents(tmp_path / "maps.npz", "z", sg2)


@pytest.fixture(scope="module")
def sg2_run(tmp_path_factory, faces16):
    run = tmp_path_factory.mktemp("runs") / "sg2"
    result = CliRunner().invoke(main, ["train", "stylegan2", "--data", str(faces16), "--out", str(run),
                                       "--preset", "tiny", "--steps", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return run


def pngs(folder):
    return {p.name: np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_sample_cli_round_trip_and_float_output(sg2_run, tmp_path):
    run = CliRunner()
    first = run.invoke(main, ["sample", str(sg2_run), "--count", "3", "--seed", "4", "--out", str(tmp_path / "a"),
                              "--save-latents", "--npy"])
    assert first.exit_code == 0 and "latents" in first.output, first.output
    for kind in ("--w", "--z"):
        out = tmp_path / kind.strip("-")
        again = run.invoke(main, ["sample", str(sg2_run), kind, str(tmp_path / "a" / "latents.npz"), "--out", str(out)])
        assert again.exit_code == 0 and "seeds 4..6" in again.output, again.output
        assert pngs(out).keys() == pngs(tmp_path / "a").keys()
        assert all(np.array_equal(a, b) for a, b in zip(pngs(out).values(), pngs(tmp_path / "a").values()))
    values = np.load(tmp_path / "a" / "seed000004.npy")
    image = np.array(Image.open(tmp_path / "a" / "seed000004.png"))
    assert values.shape == (3, 16, 16) and values.min() >= -1 and values.max() <= 1
    assert np.abs(((values.transpose(1, 2, 0) + 1) * 127.5) - image).max() <= 1.0
    meta = json.loads(str(np.load(tmp_path / "a" / "latents.npz")["meta"]))
    assert meta["family"] == "stylegan2" and meta["resolution"] == 16


@pytest.mark.parametrize("args, message", [
    (["--w", "X", "--z", "X"], "give --z or --w, not both"),
    (["--w", "X", "--truncation", "0.5"], "--w is used as given"),
    (["--w", "X", "--count", "2"], "--count 2, but latents.npz holds 3"),
    (["--count", "2", "--edit", "a=1"], "no direction 'a'"),
    (["--count", "2", "--edit", "a", "--edit", "b"], "one edit strip at a time"),
    (["--count", "2", "--strengths", "1,2"], "needs both --edit NAME"),
    (["--count", "2", "--edit", "a", "--strengths", "1,x"], "must be a number"),
    (["--count", "2", "--directions", "missing.safetensors"], "does not exist"),
])
def test_sample_cli_refuses_bad_steering(sg2_run, tmp_path, args, message):
    runner = CliRunner()
    latents = tmp_path / "a"
    runner.invoke(main, ["sample", str(sg2_run), "--count", "3", "--out", str(latents), "--save-latents"])
    args = [str(latents / "latents.npz") if a == "X" else str(tmp_path / a) if a.endswith(".safetensors") else a
            for a in args]
    result = runner.invoke(main, ["sample", str(sg2_run), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_seed_plane_blends_the_four_corner_seeds():
    from animegen.latent.plane import STEP, corners, plane_latents

    model = tiny_model("stylegan3-t")
    point = corners(2.25, 1.5)
    assert [s for s, _ in point] == [2 + STEP, 3 + STEP, 2 + 2 * STEP, 3 + 2 * STEP]
    assert sum(w for _, w in point) == pytest.approx(1.0)
    seed, given = plane_latents(model, 3.0, 0.0, {})
    # An integer point is its seed (to float rounding: the corners are mapped as one batch).
    at_corner, alone = next(sample_batches(model, [3], 1, given=given)), next(sample_batches(model, [3], 1))
    assert seed == 3 and torch.allclose(at_corner, alone, atol=1e-5)
    _, half = plane_latents(model, 3.5, 0.0, {})
    with torch.no_grad():
        ws = model.draw(Noise([3, 4]))["w"]
    assert torch.allclose(half["w"][0], ws.mean(0), atol=1e-6)
    for bad in ((-1, 0), (0, float("nan")), (1e7, 0)):
        with pytest.raises(UserError, match="seed plane point"):
            corners(*bad)


def test_temperature_scales_a_drawn_z_only():
    model = tiny_model("dcgan")
    with torch.no_grad():
        cold = model.draw(Noise([1, 2]), temperature=0.5)["z"]
        assert torch.equal(cold, 0.5 * model.draw(Noise([1, 2]))["z"])
        assert torch.equal(model.draw(Noise([1]), {"z": cold[:1]}, temperature=0.5)["z"], cold[:1])
    with pytest.raises(UserError, match="--temperature 11"):
        model.resolve_sample_options({"temperature": 11})


def test_an_edit_can_name_other_style_inputs():
    from animegen.latent.directions import Direction, apply_edits, parse_edits

    model = tiny_model("stylegan2")
    vector = torch.nn.functional.normalize(torch.ones(model.mapping.w_avg.numel()), dim=0)
    known = {"d": Direction("d", vector, "test", (0, model.num_ws - 1), 2.0, {})}
    with torch.no_grad():
        latents = model.draw(Noise([0]))
    moved = apply_edits(model, latents, parse_edits(["d=1.5@1-2"], known, model))["w"] - latents["w"]
    assert torch.allclose(moved[0, 1:3], (3.0 * vector).expand(2, -1)) and not moved[0, 0].any() and not moved[0, 3:].any()
    with pytest.raises(UserError, match="layer range '9-12' is out of range"):
        parse_edits(["d=1@9-12"], known, model)
