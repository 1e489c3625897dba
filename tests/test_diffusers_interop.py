"""Runs that leave and enter through diffusers (docs/interop.md): our U-Net is diffusers'
UNet2DModel weight for weight; an exported ddpm run samples in diffusers' pipelines as in ours,
an exported edm run in diffusers' EDM schedulers; a UNet2DModel folder saved by diffusers imports
as a ddpm run that samples as the pipeline does and trains on; bad folders are one line, nothing
written. The tests that run diffusers skip without it (`pip install -e .[diffusers]`); the rest
need only our own reading and writing of its files."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from animegen.cli import main
from animegen.generate import load_generator, sample_batches
from animegen.interop import unet2d
from animegen.interop.diffusers_folder import WEIGHTS
from animegen.models.base import Noise
from animegen.models.unet import UNet, UNetConfig, paper64_config, tiny_config
from animegen.training.loop import Target, train

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"base_channels": 16, "channel_mults": [1, 2], "attention_resolutions": [8], "num_groups": 4,
         "time_embed_dim": 32, "head_channels": 8, "lr": 3e-3}
# Two heads of 16 in the 32-channel blocks, additive time conditioning: the other branch of each rule.
ADDITIVE = UNetConfig(resolution=16, base_channels=16, channel_mults=(1, 2), num_res_blocks=2,
                      attention_resolutions=(16, 8), num_groups=8, time_embed_dim=48, head_channels=16,
                      time_conditioning="add", dropout=0.0)
SEEDS = [0, 1, 2]


def _diffusers():
    return pytest.importorskip("diffusers", reason="diffusers is an optional extra: pip install -e .[diffusers]")


def _cli(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    return result.exit_code, result.output.strip()


def _random_unet(config: UNetConfig) -> UNet:
    """Every weight random (ours start some at zero, which would hide a wrong mapping)."""
    torch.manual_seed(0)
    unet = UNet(config).eval()
    for p in unet.parameters():
        p.data.normal_(0, 0.2)
    return unet


def _unet2d(diffusers, config: dict):
    return diffusers.UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()


def _generators(seeds=SEEDS):
    """One generator per image, as our Noise has: diffusers then draws each image's noise as we do."""
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("config", [tiny_config(32), paper64_config(64), ADDITIVE], ids=["tiny", "paper64", "add"])
def test_unet2d_config_round_trips(config):
    assert UNetConfig(**unet2d.unet_settings(unet2d.unet2d_config(config))) == config


@pytest.mark.parametrize("config", [tiny_config(16), ADDITIVE], ids=["tiny", "add"])
def test_our_unet_is_unet2dmodel_weight_for_weight(config):
    diffusers = _diffusers()
    ours = _random_unet(config)
    theirs = _unet2d(diffusers, unet2d.unet2d_config(config))
    theirs.load_state_dict(unet2d.to_diffusers(ours.state_dict()), strict=True)
    x, t = torch.randn(2, 3, config.resolution, config.resolution), torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x, t).sample, ours(x, t), atol=1e-5, rtol=0)
    back = unet2d.from_diffusers(theirs.state_dict(), config)
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


@pytest.fixture(scope="module")
def made(tmp_path_factory, faces16):
    """A ddpm run (the preset's cosine schedule over 1000 steps), an edm run, both 10 steps at 16 px, each exported."""
    root = tmp_path_factory.mktemp("interop")
    fast = {"batch": 8, "log_every": "100", "sample_every": "100", "ckpt_every": "100", "grid_seeds": 4}
    paths = {}
    for family, sets in (("ddpm", {}), ("edm", {"attention_resolutions": [], "c_noise_scale": 400.0})):
        run = root / family
        train(str(run), model=family, data=str(faces16), sets={**fast, **SMALL, **sets}, target=Target(steps=10),
              device="cpu", seed=3, echo=lambda line: None)
        code, out = _cli("export", run, "--format", "diffusers", "--out", root / f"{family}-diffusers")
        assert code == 0, out
        paths[family], paths[f"{family}-diffusers"] = run, root / f"{family}-diffusers"
    return paths


def _ours(run, **options):
    model, _ = load_generator(run)
    return torch.cat(list(sample_batches(model, SEEDS, 8, model.resolve_sample_options(options)))), model


def test_an_exported_ddpm_run_samples_in_diffusers_pipelines_as_in_ours(made):
    diffusers = _diffusers()
    folder = made["ddpm-diffusers"]
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == {
        "model_index.json", "unet/config.json", f"unet/{WEIGHTS}", "scheduler/scheduler_config.json",
        "animegen.json", "README.md"}
    ours, _ = _ours(made["ddpm"], sampler="ddim", steps=10, eta=0.0)
    pipe = diffusers.DDIMPipeline.from_pretrained(folder)
    theirs = pipe(batch_size=3, generator=_generators(), num_inference_steps=10, eta=0.0,
                  use_clipped_model_output=True, output_type="np").images
    assert ours.std() > 0.1  # a model that makes something
    torch.testing.assert_close(torch.from_numpy(theirs).permute(0, 3, 1, 2), (ours / 2 + 0.5).clamp(0, 1),
                               atol=1e-4, rtol=0)
    # Ancestral, every step's noise from each image's generator; over 1000 steps diffusers' float32
    # coefficients (ours are float64) add up to 1.4e-4 (measured); a wrong variance or noise order is ~0.1.
    ours, _ = _ours(made["ddpm"], sampler="ddpm")
    theirs = diffusers.DDPMPipeline.from_pretrained(folder)(batch_size=3, generator=_generators(), output_type="np")
    torch.testing.assert_close(torch.from_numpy(theirs.images).permute(0, 3, 1, 2), (ours / 2 + 0.5).clamp(0, 1),
                               atol=1e-3, rtol=0)


@pytest.mark.parametrize("sampler, scheduler", [("euler", "EDMEulerScheduler"),
                                                ("dpm-solver++", "EDMDPMSolverMultistepScheduler")])
def test_an_exported_edm_run_samples_in_diffusers_edm_schedulers_as_in_ours(made, sampler, scheduler):
    """The loop of the model card, with the U-Net's time input scaled as the card says."""
    diffusers = _diffusers()
    folder = made["edm-diffusers"]
    ours, model = _ours(made["edm"], sampler=sampler, steps=6)
    unet = diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet").eval()
    schedule = getattr(diffusers, scheduler).from_pretrained(folder, subfolder="scheduler")
    scale = json.loads((folder / "animegen.json").read_text())["timestep_scale"]
    assert f"t * {scale:g}" in (folder / "README.md").read_text()
    schedule.set_timesteps(6)
    x = Noise(SEEDS).randn(*model.z_shape) * schedule.sigmas[0]
    with torch.no_grad():
        for t in schedule.timesteps:
            x = schedule.step(unet(schedule.scale_model_input(x, t), t * scale).sample, t, x).prev_sample
    assert ours.std() > 0.1
    torch.testing.assert_close(x, ours, atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def saved_by_diffusers(tmp_path_factory):
    """A random UNet2DModel shaped as diffusers' train_unconditional example makes them (additive
    time conditioning, heads of 8, attention at one level), saved with its DDPMScheduler."""
    diffusers = _diffusers()
    torch.manual_seed(1)
    unet = diffusers.UNet2DModel(sample_size=16, block_out_channels=(16, 32, 32), layers_per_block=1,
                                 norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    folder = tmp_path_factory.mktemp("hub") / "ddpm-anime-16"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        folder)
    return folder


def test_a_unet2dmodel_saved_by_diffusers_imports_as_a_ddpm_run_that_samples_as_the_pipeline(saved_by_diffusers,
                                                                                             tmp_path):
    diffusers = _diffusers()
    code, out = _cli("import", saved_by_diffusers, "--out", tmp_path / "run")
    assert code == 0 and "ddpm at 16 px (linear schedule over 1000 steps, eps-prediction)" in out, out
    ours, _ = _ours(tmp_path / "run", sampler="ddim", steps=20, eta=0.0)
    pipe = diffusers.DDIMPipeline.from_pretrained(saved_by_diffusers)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    theirs = pipe(batch_size=3, generator=_generators(), num_inference_steps=20, eta=0.0,
                  use_clipped_model_output=True, output_type="np").images
    assert ours.std() > 0.1
    torch.testing.assert_close(torch.from_numpy(theirs).permute(0, 3, 1, 2), (ours / 2 + 0.5).clamp(0, 1),
                               atol=1e-4, rtol=0)


def test_an_imported_run_trains_on_and_starts_others(saved_by_diffusers, tmp_path, faces16):
    diffusers = _diffusers()
    run = tmp_path / "run"
    assert _cli("import", saved_by_diffusers, "--out", run, "--data", faces16, "--set", "batch=4")[0] == 0
    code, out = _cli("runs", "info", run)
    assert f"{saved_by_diffusers} (diffusers folder)" in out, out
    code, out = _cli("train", "--out", run, "--resume", "--steps", "2", "--device", "cpu")
    assert code == 0, out
    code, out = _cli("train", "ddpm", "--data", faces16, "--out", tmp_path / "tuned", "--init-from", run,
                     "--steps", "1", "--device", "cpu", "--set", "batch=4")
    assert code == 0, out
    code, out = _cli("export", run, "--out", tmp_path / "back")
    assert code == 0, out
    reloaded = diffusers.UNet2DModel.from_pretrained(tmp_path / "back", subfolder="unet")
    assert reloaded.config.resnet_time_scale_shift == "default"


# ---------------------------------------------------------------- refused, in one line, nothing written
def _copy(folder, tmp_path):
    copy = tmp_path / "folder"
    shutil.copytree(folder, copy)
    return copy


def _edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _break_weights(folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "unet" / WEIGHTS)
    tensors["conv_in.weight"] = tensors["conv_in.weight"][:8]
    save_file(tensors, folder / "unet" / WEIGHTS)


BAD_FOLDERS = {
    "no unet config": (lambda f: (f / "unet" / "config.json").unlink(), "not a diffusers UNet2DModel folder"),
    "no weights": (lambda f: (f / "unet" / WEIGHTS).unlink(), f"has no {WEIGHTS}"),
    "a pickle": (lambda f: (f / "unet" / WEIGHTS).rename(f / "unet" / "diffusion_pytorch_model.bin"),
                 "is a pickle, which animegen never loads"),
    "no scheduler": (lambda f: shutil.rmtree(f / "scheduler"), "no scheduler config"),
    "unknown block": (lambda f: _edit_json(f / "unet" / "config.json", down_block_types=["CrossAttnDownBlock2D",
                                                                                        "AttnDownBlock2D"]),
                      "down_block_types: 'CrossAttnDownBlock2D'"),
    "unknown setting": (lambda f: _edit_json(f / "unet" / "config.json", encoder_hid_dim=64), "encoder_hid_dim:"),
    "fourier time": (lambda f: _edit_json(f / "unet" / "config.json", time_embedding_type="fourier"),
                     "time_embedding_type: 'fourier'"),
    "mismatched shapes": (_break_weights, "conv_in.weight has shape (8, 3, 3, 3)"),
    "an EDM scheduler": (lambda f: _edit_json(f / "scheduler" / "scheduler_config.json",
                                              _class_name="EDMEulerScheduler"), "_class_name: 'EDMEulerScheduler'"),
    "another beta range": (lambda f: _edit_json(f / "scheduler" / "scheduler_config.json", beta_schedule="linear",
                                                beta_end=0.012), "beta_end: 0.012"),
    "scaled_linear betas": (lambda f: _edit_json(f / "scheduler" / "scheduler_config.json",
                                                 beta_schedule="scaled_linear"), "beta_schedule: 'scaled_linear'"),
    "sample prediction": (lambda f: _edit_json(f / "scheduler" / "scheduler_config.json", prediction_type="sample"),
                          "prediction_type: 'sample'"),
    "bad JSON": (lambda f: (f / "unet" / "config.json").write_text("{"), "is not valid JSON"),
}


@pytest.mark.parametrize("damage", BAD_FOLDERS, ids=list(BAD_FOLDERS))
def test_bad_folders_are_refused_in_one_line_and_nothing_is_written(made, tmp_path, damage):
    spoil, says = BAD_FOLDERS[damage]
    folder = _copy(made["ddpm-diffusers"], tmp_path)
    spoil(folder)
    code, out = _cli("import", folder, "--out", tmp_path / "run")
    assert code == 2 and says in out and len(out.splitlines()) == 1, out
    assert not (tmp_path / "run").exists()


def test_the_unbroken_copy_imports(made, tmp_path):
    """The folder the damages above start from is good: each refusal is its damage's."""
    code, out = _cli("import", _copy(made["ddpm-diffusers"], tmp_path), "--out", tmp_path / "run")
    assert code == 0, out


def test_attention_weights_under_their_pre_0_15_names_are_read(made, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(made["ddpm-diffusers"], tmp_path)
    weights = load_file(folder / "unet" / WEIGHTS)
    old = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    renamed = {}
    for key, value in weights.items():
        for new, before in old.items():
            key = key.replace(new, before)
        renamed[key] = value
    assert any(".proj_attn." in k for k in renamed)
    save_file(renamed, folder / "unet" / WEIGHTS)
    assert _cli("import", folder, "--out", tmp_path / "run")[0] == 0
    model, _ = load_generator(tmp_path / "run")
    imported = unet2d.to_diffusers(model.diffusers_form().unet.state_dict())
    assert imported.keys() == weights.keys() and all(torch.equal(imported[k], v) for k, v in weights.items())


def test_fp16_weights_alone_are_read_as_float32(made, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(made["ddpm-diffusers"], tmp_path)
    weights = load_file(folder / "unet" / WEIGHTS)
    save_file({k: v.half() for k, v in weights.items()}, folder / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    (folder / "unet" / WEIGHTS).unlink()
    assert _cli("import", folder, "--out", tmp_path / "run")[0] == 0
    model, _ = load_generator(tmp_path / "run")
    imported = unet2d.to_diffusers(model.diffusers_form().unet.state_dict())
    assert all(imported[k].dtype == torch.float32 and torch.equal(imported[k], v.half().float())
               for k, v in weights.items())


@pytest.mark.parametrize("args, says", [
    (["--checkpoint", "999"], "no checkpoint"),
    (["--format", "onnx"], "'onnx' is not"),
])
def test_bad_exports_are_one_line_and_write_nothing(made, tmp_path, args, says):
    code, out = _cli("export", made["ddpm"], "--out", tmp_path / "x", *args)
    assert code == 2 and says in out.lower() and len(out.splitlines()) == 1, out
    assert not (tmp_path / "x").exists()


def test_an_ema_length_exports_its_weights_and_has_no_raw_ones(tmp_path, faces16):
    run = tmp_path / "run"
    train(str(run), model="ddpm", data=str(faces16), sets={"batch": 4, "grid_seeds": 2, **SMALL,
                                                           "posthoc_ema": [0.05, 0.1], "posthoc_every": "2"},
          target=Target(steps=6), device="cpu", seed=0, echo=lambda line: None)
    assert _cli("ema", run, "--length", "0.08")[0] == 0
    code, out = _cli("export", run, "--checkpoint", "ema:0.08", "--weights", "model", "--out", tmp_path / "x")
    assert code == 2 and "holds no model weights; it has ema." in out and len(out.splitlines()) == 1, out
    assert not (tmp_path / "x").exists()
    code, out = _cli("export", run, "--checkpoint", "ema:0.08", "--out", tmp_path / "x")
    assert code == 0 and json.loads((tmp_path / "x" / "animegen.json").read_text())["checkpoint"].endswith("0.08"), out


@pytest.mark.parametrize("family, sets, says", [
    ("toy", {}, "toy runs have no diffusers form; ddpm, edm runs do."),
    ("edm", {"precondition": "eps"}, "precondition 'eps' has no diffusers scheduler"),
])
def test_runs_without_a_diffusers_form_are_refused(tmp_path, faces16, family, sets, says):
    run = tmp_path / family
    train(str(run), model=family, data=str(faces16), sets={"batch": 4, "grid_seeds": 2, **sets}, target=Target(steps=1),
          device="cpu", seed=0, echo=lambda line: None)
    code, out = _cli("export", run, "--out", tmp_path / "x")
    assert code == 2 and says in out and len(out.splitlines()) == 1, out
    assert not (tmp_path / "x").exists()


def test_the_model_card_carries_the_runs_fid_and_dataset(made, tmp_path, cheap_inception):
    code, out = _cli("eval", made["ddpm"], "--num", "8", "--steps", "4", "--device", "cpu")
    assert code == 0, out
    code, out = _cli("export", made["ddpm"], "--out", tmp_path / "x")
    assert code == 0 and "FID" in out, out
    card = (tmp_path / "x" / "README.md").read_text()
    provenance = json.loads((tmp_path / "x" / "animegen.json").read_text())
    header = pytest.importorskip("yaml", reason="PyYAML comes with diffusers").safe_load(card.split("---")[1])
    assert header["library_name"] == "diffusers" and "animegen" in header["tags"] and header["license"] == "other"
    assert header["animegen"]["dataset_content_hash"] == provenance["dataset"]["content_hash"]
    result = header["model-index"][0]["results"][0]
    assert result["dataset"]["revision"] == provenance["dataset"]["content_hash"]
    assert result["metrics"][0]["type"] == "fid"
    assert result["metrics"][0]["value"] == pytest.approx(provenance["fid"]["value"], rel=1e-3)
    assert provenance["fid"]["images"] == 8 and provenance["fid"]["sample_options"]["steps"] == 4
    assert f"{provenance['fid']['value']:.2f}" in card.split("## Evaluation")[1]
