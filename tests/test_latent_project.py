"""Projection (animegen.latent.project, `animegen project`): an image the model generated is
found again; the latents file renders the reconstructions bit for bit through `sample`; an
edit applies to a projected image; bad images and options a family lacks are one line.
Tiny runs at 16 px trained 2 steps (near their random init)."""

import json
import shlex
import struct
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from animegen.cli import main
from animegen.diffusion import samplers
from animegen.generate import load_generator, sample_batches
from animegen.io import to_uint8
from animegen.metrics.inception import weights_path
from animegen.latent.directions import Direction, save_directions
from animegen.latent.perceptual import ProjectionLoss, _inception_features, _inception_layers, parse_loss
from animegen.latent.project import Schedule, noise_regularization, project, psnr
from animegen.models import registry
from animegen.training.loop import Target, train

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"batch": 8, "log_every": "2", "sample_every": "100", "ckpt_every": "100", "grid_seeds": 4}
SMALLER = {"ddpm": {"base_channels": 16, "channel_mults": [1, 2], "attention_resolutions": [8], "num_groups": 4,
                    "time_embed_dim": 32, "timesteps": 50, "sample_steps": 10},
           "edm": {"base_channels": 16, "channel_mults": [1, 2], "attention_resolutions": [8], "num_groups": 4,
                   "time_embed_dim": 32, "sample_steps": 10}}


@pytest.fixture(scope="module")
def make_run(tmp_path_factory, faces16):
    made = {}

    def make(family):
        if family not in made:
            made[family] = tmp_path_factory.mktemp("runs") / family
            train(str(made[family]), model=family, data=str(faces16), sets={**FAST, **SMALLER.get(family, {})},
                  target=Target(steps=2), device="cpu", seed=3, echo=lambda line: None)
        return made[family]

    return make


def _generated(model, seeds, options=None):
    """uint8 images the model makes from `seeds`, and the same as float targets."""
    images = to_uint8(torch.cat(list(sample_batches(model, seeds, 64, model.resolve_sample_options(options or {})))))
    return images, torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def _psnr_of(model, space, steps, loss="pixel", seeds=(5,)):
    images, targets = _generated(model, seeds)
    result = project(model, targets, space, ProjectionLoss(parse_loss(loss), targets) if loss else None, steps)
    recon = to_uint8(torch.cat(list(sample_batches(model, range(len(seeds)), 64, result.options, given=result.latents))))
    return min(psnr(a, b) for a, b in zip(images, recon))


def test_stylegan2_w_plus_finds_a_generated_image(make_run):
    model, _ = load_generator(make_run("stylegan2"))
    assert _psnr_of(model, "w+", 300) >= 30  # measured 33.8 dB


@pytest.mark.slow
@pytest.mark.parametrize("family, space, steps, least", [
    ("stylegan2", "w", 300, 28),    # measured 29.8 dB
    ("stylegan3-t", "w+", 300, 37),  # 39.2
    ("stylegan3-t", "w", 300, 37),   # 40.0
    ("dcgan", "z", 100, 50),         # 61.5
    ("vae", "z", 0, 30),             # 33.5: the encoder alone
    ("vae", "z", 100, 50),           # 55.2: refined
])
def test_each_family_finds_a_generated_image(make_run, family, space, steps, least):
    model, _ = load_generator(make_run(family))
    assert _psnr_of(model, space, steps) >= least


def test_ddim_inversion_runs_the_sampler_backwards(make_run):
    """Inverting then sampling with DDIM returns near the image (the approximation is eps at
    the step's start); with a denoiser whose eps ignores x_t it is exact."""
    model, _ = load_generator(make_run("ddpm"))
    images, targets = _generated(model, [5], {"sampler": "ddim", "steps": 10})
    z = samplers.ddim_invert(model.unet, model.schedule, targets, 10, model.config.prediction)
    options = model.resolve_sample_options({"sampler": "ddim", "steps": 10})
    recon = to_uint8(next(sample_batches(model, [0], 64, options, given={"z": z})))
    assert psnr(images[0], recon[0]) >= 11  # measured 12.2 dB for this 2-step model (16.6 after 300 steps)
    fixed_eps = torch.randn(1, 3, 16, 16)
    x0 = torch.rand(1, 3, 16, 16) * 1.6 - 0.8
    denoiser = lambda x, t: fixed_eps.expand_as(x)  # noqa: E731
    x_T = samplers.ddim_invert(denoiser, model.schedule, x0, 10)
    back = samplers.sample(denoiser, model.schedule, x0.shape, "ddim", 10, x_T=x_T)
    assert torch.allclose(back, x0, atol=1e-3)  # x_T carries x0 times alpha_{T-1} ~ 1e-3


def test_schedule_is_nvidias():
    s = Schedule(1000)
    assert s.lr_at(0) == 0 and s.lr_at(0.025) == pytest.approx(0.05) and s.lr_at(0.5) == pytest.approx(0.1)
    assert s.lr_at(0.875) == pytest.approx(0.05) and s.lr_at(1.0) == pytest.approx(0)
    assert s.noise_at(0) == pytest.approx(0.05) and s.noise_at(0.375) == pytest.approx(0.0125) and s.noise_at(0.8) == 0
    white, smooth = torch.randn(2, 1, 16, 16), torch.ones(2, 1, 16, 16)
    assert (noise_regularization([smooth]) > 100 * noise_regularization([white])).all()


def test_losses_are_zero_at_the_target_and_differentiable(make_run):
    model, _ = load_generator(make_run("stylegan2"))
    _, targets = _generated(model, [1, 2])
    for spec in ("pixel", "inception", "discriminator", "pixel+0.5*discriminator"):
        loss = ProjectionLoss(parse_loss(spec), targets, make_run("stylegan2"))
        assert loss(targets).abs().max() < 1e-5, spec
        images = targets.flip(0).clone().requires_grad_(True)
        value = loss(images)
        value.sum().backward()
        assert (value > 0).all() and images.grad.abs().sum() > 0, spec


def test_inception_term_equals_the_files_layers():
    """The inception term's layers (metrics' eager network, batch norms folded) give the
    TorchScript file's pool0, pool1 and mixed_2 features to 1e-4 of their mean |feature|,
    and pass gradients to the images."""
    path = str(weights_path())
    ours = _inception_layers(path, torch.device("cpu"))
    theirs = list(torch.jit.load(path).net.layers.named_children())[: len(ours)]
    images = (torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1).requires_grad_()
    with torch.no_grad():
        expected = _inception_features(theirs, images)
    features = _inception_features(ours, images)
    for f, e in zip(features, expected, strict=True):
        assert f.shape == e.shape and (f - e).abs().max() < 1e-4 * e.abs().mean()
    sum(f.square().sum() for f in features).backward()
    assert images.grad.abs().sum() > 0


def _png(path, image):
    Image.fromarray(image).save(path)
    return str(path)


def _project_cli(tmp_path, run, files, *options):
    result = CliRunner().invoke(main, ["project", str(run), *map(str, files), "--out", str(tmp_path / "proj"),
                                       "--device", "cpu", *options])
    assert result.exit_code == 0, result.output
    return tmp_path / "proj", result.output


# Per family, what the projection test varies (default: 10 steps of the pixel loss), and the sampler
# settings its targets are made with (default: the run's).
PROJECT_OPTIONS = {"stylegan2": ["--steps", "20", "--loss", "pixel+discriminator"],
                   "stylegan3-t": ["--steps", "10", "--space", "w"], "ddpm": ["--steps", "5"], "edm": ["--steps", "5"]}
TARGET_OPTIONS = {"ddpm": {"sampler": "ddim", "steps": 5}, "edm": {"steps": 5}}


@pytest.mark.parametrize("family", registry.names())
def test_latents_file_renders_the_reconstructions_bit_for_bit(tmp_path, make_run, family):
    """`project`'s latents, rendered by the `sample` command its report gives, are its reconstructions."""
    run = make_run(family)
    model, _ = load_generator(run)
    images, _ = _generated(model, [7, 8], TARGET_OPTIONS.get(family))
    files = [_png(tmp_path / f"face{i}.png", im) for i, im in enumerate(images)]
    out, printed = _project_cli(tmp_path, run, files, *PROJECT_OPTIONS.get(family, ["--steps", "10"]))
    report = json.loads((out / "report.json").read_text())
    assert "mean PSNR" in printed and len(printed.strip().splitlines()) == 1
    assert [r["source"] for r in report["images"]] == files
    command = [str(tmp_path / "again") if a == "OUT" else a for a in shlex.split(report["reproduce"])]
    assert command[:3] == ["animegen", "sample", str(run)]
    again = CliRunner().invoke(main, [*command[1:], "--device", "cpu"])
    assert again.exit_code == 0, again.output
    for i in range(2):
        recon = np.asarray(Image.open(out / f"recon-{i:03d}.png"))
        assert np.array_equal(recon, np.asarray(Image.open(tmp_path / "again" / f"seed{i:06d}.png")))
        assert np.array_equal(np.asarray(Image.open(out / f"target-{i:03d}.png")), images[i])
        assert report["images"][i]["psnr"] == pytest.approx(psnr(images[i], recon))


def test_a_projected_face_can_be_edited(tmp_path, make_run):
    run = make_run("stylegan2")
    model, _ = load_generator(run)
    images, _ = _generated(model, [3])
    out, _ = _project_cli(tmp_path, run, [_png(tmp_path / "face.png", images[0])], "--steps", "10", "--video")
    gif = Image.open(out / "progress-000.gif")
    assert gif.n_frames == 2 and gif.size == (32, 16)  # steps 0 and the final image; target beside each
    with np.load(out / "latents.npz") as saved:  # the optimised noise maps, renormalised per image
        maps = [saved[k] for k in saved.files if k.startswith("noise_")]
    assert len(maps) == len(model.synthesis.convs)
    for m in maps:
        assert np.allclose(m.mean(axis=(1, 2, 3)), 0, atol=1e-5) and np.allclose(m.std(axis=(1, 2, 3)), 1, atol=1e-4)
    vector = torch.nn.functional.normalize(torch.randn(model.mapping.w_avg.numel()), dim=0)
    save_directions(tmp_path / "d.safetensors", model, [Direction("d", vector, "random", (0, model.num_ws - 1), 1.0, {})])
    edited = {}
    for strength in ("0", "3"):
        result = CliRunner().invoke(main, ["sample", str(run), "--w", str(out / "latents.npz"), "--directions",
                                           str(tmp_path / "d.safetensors"), "--edit", f"d={strength}", "--out",
                                           str(tmp_path / strength), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        edited[strength] = np.asarray(Image.open(tmp_path / strength / "seed000000.png"))
    assert np.array_equal(edited["0"], np.asarray(Image.open(out / "recon-000.png")))
    assert not np.array_equal(edited["3"], edited["0"])


def _huge_png():
    """A PNG whose header says 20000 x 20000 pixels (refused before any decoding)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("content, says", [
    (b"", "empty file"), (b"not an image at all", "not a recognized image"), (_huge_png(), "decompression bomb"),
    (None, "too small")])
def test_bad_images_are_one_line(tmp_path, make_run, content, says):
    bad = tmp_path / "bad.png"
    if content is None:
        Image.new("RGB", (4, 4)).save(bad)
    else:
        bad.write_bytes(content)
    result = CliRunner().invoke(main, ["project", str(make_run("vae")), str(bad), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and says in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("family, options, says", [
    ("vae", ["--space", "w"], "vae projects into z"),
    ("stylegan2", ["--space", "z"], "stylegan2 projects into w+ or w"),
    ("ddpm", ["--loss", "pixel"], "DDIM inversion"),
    ("ddpm", ["--steps", "51"], "--steps (DDIM steps) must be an integer from 1 to 50"),
    ("edm", ["--loss", "pixel"], "Heun inversion"),
    ("edm", ["--steps", "1001"], "--steps (Heun steps) must be an integer from 1 to 1000"),
    ("vae", ["--loss", "discriminator"], "StyleGAN run's discriminator"),
    ("stylegan2", ["--steps", "0"], "--steps must be an integer from 1"),
    ("vae", ["--steps", "0", "--video"], "--video shows the optimisation"),
    ("dcgan", ["--loss", "pixel+lpips"], "give terms pixel, inception, discriminator"),
    ("dcgan", ["--loss", "pixel+pixel"], "names a term twice"),
])
def test_options_a_family_lacks_are_refused(tmp_path, make_run, family, options, says):
    face = _png(tmp_path / "face.png", np.zeros((16, 16, 3), np.uint8))
    result = CliRunner().invoke(main, ["project", str(make_run(family)), face, "--out", str(tmp_path / "p"), *options])
    assert result.exit_code == 2 and says in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "p").exists()
