"""The edm family: EDM's preconditioning, its training step, its sampling options (and the
ones refused), autoguidance, and Heun inversion of the model's own images. Tiny models at 16 px."""

import copy

import pytest
import torch
from click.testing import CliRunner

from animegen.cli import main
from animegen.errors import UserError
from animegen.generate import load_generator, sample_batches
from animegen.io import to_uint8
from animegen.latent.project import project, psnr
from animegen.models.base import Noise
from animegen.models.edm import AUGMENT_LABELS, EDM, EDMConfig
from animegen.training.loop import Target, train
from test_learning import build, faces
from test_learning import train as train_steps

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"base_channels": 16, "channel_mults": [1, 2], "attention_resolutions": [], "num_groups": 4,
         "time_embed_dim": 32}


def small_model(**config) -> EDM:
    torch.manual_seed(0)
    return EDM(EDMConfig(resolution=16, **{**SMALL, **config})).eval()


@pytest.mark.parametrize("sigma", [0.002, 0.1, 0.5, 3.0, 80.0])
def test_preconditioning_gives_unit_variance_input_and_target(sigma):
    """EDM's point (their appendix B.6): for data of std sigma_data, F's input c_in (y + sigma n)
    and its training target (y - c_skip (y + sigma n)) / c_out have unit variance at every sigma,
    and the loss weight lambda = 1 / c_out^2 makes the loss F's plain squared error."""
    model = small_model(sigma_data=0.6)
    g = torch.Generator().manual_seed(0)
    y, n = 0.6 * torch.randn(200_000, generator=g, dtype=torch.float64), torch.randn(200_000, generator=g, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = model.preconditioning(torch.tensor(sigma, dtype=torch.float64))
    assert (c_in * (y + sigma * n)).std().item() == pytest.approx(1, abs=0.01)
    assert ((y - c_skip * (y + sigma * n)) / c_out).std().item() == pytest.approx(1, abs=0.01)
    assert c_noise.item() == pytest.approx(torch.tensor(sigma).log().item() / 4)
    _, objective = build("edm", sigma_data=0.6)
    assert (objective.loss_weight(torch.tensor(sigma, dtype=torch.float64)) * c_out**2).item() == pytest.approx(1)


def test_untrained_denoiser_is_the_skip_connection():
    """The U-Net's output conv starts at zero: D = c_skip x (edm), D = x (eps prediction)."""
    x = torch.randn(2, 3, 16, 16)
    for precondition, skip in (("edm", 0.25 / (0.25 + 4.0)), ("eps", 1.0)):
        model = small_model(precondition=precondition)
        torch.testing.assert_close(model(x, 2.0), skip * x)


def test_training_lowers_the_weighted_denoising_error():
    """30 steps on 8 faces: the loss-weighted error of D at fixed noise levels spread over the
    training distribution falls by more than 10% (measured 0.81 of the untrained 1.01, whose
    D = c_skip x is already the best linear denoiser of data with std sigma_data). A flipped
    sign in the loss makes it rise."""
    model, objective = build("edm", batch=8, lr=3e-3, c_noise_scale=400.0, **SMALL)
    real = faces(8)
    g = torch.Generator().manual_seed(7)
    sigma = torch.tensor([0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3.0, 6.0]).view(-1, 1, 1, 1)
    noisy = real + sigma * torch.randn(real.shape, generator=g)

    def error():
        with torch.no_grad():
            return (objective.loss_weight(sigma) * (model(noisy, sigma.flatten()) - real).square()).mean().item()

    before = error()
    train_steps(objective, real, 30)
    assert error() < 0.9 * before, before


def test_non_leaking_augmentation_labels_what_it_did():
    """Each label is zero exactly when its augmentation left the image alone, and the images
    are pixel-exact flips, quarter turns and shifts of the originals."""
    model, objective = build("edm", augment=1.0, **SMALL)
    assert model.augment_map.in_features == len(AUGMENT_LABELS)
    real = faces(64)
    images, labels = objective.augment(real, 1.0)
    assert labels.shape == (64, len(AUGMENT_LABELS)) and (labels != 0).any(0).all()
    plain = (labels == 0).all(1)
    assert torch.equal(images[plain], real[plain])
    flipped_only = (labels[:, 0] == 1) & (labels[:, 1:] == 0).all(1)
    assert torch.equal(images[flipped_only], real[flipped_only].flip(3))
    none, none_labels = objective.augment(real, 0.0)
    assert torch.equal(none, real) and not none_labels.any()
    train_steps(objective, real[:8], 1)  # the labels reach the network


def test_sampling_options_and_their_rules():
    model = small_model(sample_steps=7)
    resolved = model.resolve_sample_options({})
    assert resolved["sampler"] == "heun" and resolved["steps"] == 7 and resolved["churn"] == 0
    assert resolved["s_tmax"] == resolved["sigma_max"] == 80.0 and model.deterministic(resolved)
    assert model.nfe(resolved) == 13
    assert not model.deterministic(model.resolve_sample_options({"churn": 5.0}))
    dpm = model.resolve_sample_options({"sampler": "dpm-solver++"})
    assert "churn" not in dpm and model.nfe(dpm) == 7
    sweep = model.nfe_sweep([5, 10, 79])
    assert {(p["sampler"], p["steps"]) for p in sweep} == {("heun", 3), ("heun", 5), ("heun", 40),
                                                          ("dpm-solver++", 5), ("dpm-solver++", 10), ("dpm-solver++", 79)}


@pytest.mark.parametrize("options, says", [
    ({"sampler": "dpm-solver++", "churn": 10.0}, "--churn applies to the heun sampler only"),
    ({"sampler": "euler", "s_noise": 1.003}, "euler has no churn"),
    ({"sigma_min": 5.0, "sigma_max": 2.0}, "must be below sigma_max"),
    ({"steps": 0}, "--steps 0 is out of range"),
    ({"guidance": 2.0}, "give the guide too"),
    ({"eta": 0.5}, "does not take sampling option(s) eta"),
])
def test_bad_sampling_options_are_refused(options, says):
    with pytest.raises(UserError, match=says.replace("(", r"\(").replace(")", r"\)")):
        small_model().resolve_sample_options(options)


def test_autoguidance_extrapolates_from_the_guide():
    """D_w = D_guide + w (D - D_guide): w = 1 is the model alone, w = 0 the guide, and a guide
    equal to the model changes nothing."""
    model = small_model()
    for p in model.parameters():  # a non-trivial F
        p.data.add_(0.05 * torch.randn_like(p))
    guide = copy.deepcopy(model)
    for p in guide.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 16, 16)
    model.set_guide(guide)
    assert "guide" not in dict(model.named_modules()) and not any(k.startswith("guide") for k in model.state_dict())
    at = lambda w: model.denoiser(model.resolve_sample_options({"guidance": w}))(x, 1.5)  # noqa: E731
    torch.testing.assert_close(at(1.0), model(x, 1.5))
    torch.testing.assert_close(at(0.0), guide(x, 1.5))
    torch.testing.assert_close(at(2.5), guide(x, 1.5) + 2.5 * (model(x, 1.5) - guide(x, 1.5)))
    assert model.resolve_sample_options({})["guidance"] == 2.0  # the default weight, once a guide is attached
    model.set_guide(copy.deepcopy(model))
    torch.testing.assert_close(at(3.0), model(x, 1.5))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, faces16):
    """Two edm runs (10 steps and 2 steps), a ddpm run, all at 16 px; an edm run at 8 px."""
    from animegen.data.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("edm-runs")
    faces8 = root / "faces8"
    synthesize_dataset(faces8, count=20, resolution=8, seed=0, test_fraction=0.2)
    fast = {"batch": 8, "log_every": "100", "sample_every": "100", "ckpt_every": "100", "grid_seeds": 4}
    made = {}
    for name, family, data, steps, sets in (("edm", "edm", faces16, 10, {"c_noise_scale": 400.0, "lr": 3e-3}),
                                            ("guide", "edm", faces16, 2, {}), ("ddpm", "ddpm", faces16, 2, {}),
                                            ("edm8", "edm", faces8, 2, {"channel_mults": [1, 2]})):
        small = SMALL if family == "edm" else {**SMALL, "attention_resolutions": [8], "timesteps": 50}
        made[name] = root / name
        train(str(made[name]), model=family, data=str(data), sets={**fast, **small, **sets}, target=Target(steps=steps),
              device="cpu", seed=3, echo=lambda line: None)
    return made


def test_heun_inversion_reconstructs_the_models_own_images(runs):
    """`project` inverts the deterministic Heun sampler; sampling from the z found gives the image
    back (measured 51 dB at 18 levels, 35 evaluations each way; 36 dB at 10, exact at 40)."""
    model, _ = load_generator(runs["edm"])
    options = model.resolve_sample_options({})
    images = to_uint8(next(sample_batches(model, [4, 5], 64, options)))
    targets = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    found = project(model, targets, "z", None, 18)
    recon = to_uint8(next(sample_batches(model, [0, 1], 64, found.options, given=found.latents)))
    assert min(psnr(a, b) for a, b in zip(images, recon)) >= 30


def _cli(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    return result.exit_code, result.output.strip()


def test_a_guided_run_samples_and_evaluates_with_its_guide(runs, tmp_path):
    code, out = _cli("sample", runs["edm"], "--count", "2", "--out", tmp_path / "a", "--steps", "3",
                     "--guide", runs["guide"], "--guidance", "1.5", "--device", "cpu")
    assert code == 0, out
    plain = _cli("sample", runs["edm"], "--count", "2", "--out", tmp_path / "b", "--steps", "3", "--device", "cpu")
    assert plain[0] == 0
    assert (tmp_path / "a" / "seed000000.png").read_bytes() != (tmp_path / "b" / "seed000000.png").read_bytes()


@pytest.mark.parametrize("args, says", [
    (["--guide", "ddpm"], "a guide must be a run of the same family"),
    (["--guide", "edm8"], "a guide must make images of the same resolution"),
    (["--guidance", "2"], "give the guide too"),
    (["--sampler", "dpm-solver++", "--churn", "40"], "dpm-solver++ has no churn"),
    (["--sampler", "euler", "--churn", "40"], "euler has no churn"),
    (["--sigma-min", "90"], "must be below sigma_max"),
])
def test_bad_guides_and_sampler_settings_are_one_line(runs, tmp_path, args, says):
    args = [runs[a] if a in runs else a for a in args]
    code, out = _cli("sample", runs["edm"], "--count", "1", "--out", tmp_path / "x", "--device", "cpu", *args)
    assert code == 2 and says in out and len(out.splitlines()) == 1, out
    assert not (tmp_path / "x").exists()


def test_churned_samples_differ_by_seed_stream_not_by_batch():
    model = small_model()
    options = model.resolve_sample_options({"steps": 4, "churn": 20.0})
    together = model.sample(Noise([3, 4]), **options)
    alone = model.sample(Noise([4]), **options)
    torch.testing.assert_close(together[1:], alone)
