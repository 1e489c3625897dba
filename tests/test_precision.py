"""Precision and compile as training settings: every family trains under bf16 autocast on
the CPU (StyleGAN with its R1 and path length steps, EMA, ADA) with finite losses and resumes
exactly; `compile=true` leaves checkpoint names alone and computes what eager does."""

import json

import pytest
import torch

from animegen import runs
from animegen.errors import UserError
from animegen.models import registry
from animegen.training.config import changed_settings, make_config
from animegen.training.loop import Target, train
from animegen.training.objective import TrainContext

FAMILIES = registry.names()
FAST = {"batch": 4, "log_every": "1", "sample_every": "0", "ckpt_every": "2", "grid_seeds": 1,
        "tensorboard": False, "keep": 10, "precision": "bf16"}
# The smallest networks per family (a family not named here trains its tiny preset); StyleGAN's lazy regularizers every 2 steps (steps 0 and 2,
# so the resumed part has them too) and ADA's p rising from the first adjustment.
STYLEGAN = {"z_dim": 16, "w_dim": 16, "d_channel_base": 128, "d_channel_max": 16, "mbstd_group": 2,
            "r1_interval": 2, "ada_interval": 1, "ada_target": -1.0, "ada_kimg": 0.05}
STYLEGAN3 = {**STYLEGAN, "channel_base": 256, "channel_max": 16, "num_layers": 2, "num_critical": 1}
SMALLEST = {
    "vae": {"channels": 8, "max_channels": 16, "latent_dim": 8},
    "dcgan": {"g_channels": 8, "d_channels": 8, "latent_dim": 16},
    "ddpm": {"base_channels": 16, "channel_mults": [1, 2], "attention_resolutions": [8], "num_groups": 4,
             "time_embed_dim": 32, "timesteps": 50, "sample_steps": 2},
    "stylegan2": {**STYLEGAN, "channel_base": 128, "channel_max": 16, "pl_interval": 2},
    "stylegan3-t": STYLEGAN3,
    "stylegan3-r": {**STYLEGAN3, "channel_base": 512},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(run, family, data, steps, resume=False, **sets):
    if resume:
        return train(str(run), target=Target(steps=steps), resume=True, device="cpu", echo=lambda line: None,
                     sets=sets)
    return train(str(run), model=family, data=str(data), sets={**FAST, **SMALLEST.get(family, {}), **sets},
                 target=Target(steps=steps), device="cpu", seed=1, echo=lambda line: None)


class ActivationDtypes:
    """The dtypes of every module's tensor output, seen by a global forward hook."""

    def __enter__(self):
        self.seen = set()
        self.handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self.seen

    def _hook(self, module, inputs, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            self.seen.add(output.dtype)

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_training_is_finite_and_resumes_exactly(tmp_path, faces16, family):
    with ActivationDtypes() as seen:
        _train(tmp_path / "split", family, faces16, 2)
    assert torch.bfloat16 in seen  # autocast was on
    config = json.loads((tmp_path / "split" / "config.json").read_text())
    assert config["train"]["precision"] == "bf16" and 'precision="bf16"' in changed_settings(config)
    with pytest.raises(UserError, match="precision fp32 differs"):
        _train(tmp_path / "split", family, faces16, 4, resume=True, precision="fp32")
    _train(tmp_path / "split", family, faces16, 4, resume=True)
    _train(tmp_path / "straight", family, faces16, 4)

    logged = [json.loads(line) for line in open(tmp_path / "split" / "metrics.jsonl")]
    losses = [e for e in logged if e["event"] == "train"]
    assert [e["step"] for e in losses] == [1, 2, 3, 4]
    names = {k for e in losses for k in e} - {"step", "kimg", "train_seconds", "time", "event", "img_per_s",
                                              "peak_mem_mb"}
    assert all(isinstance(e[k], float) for e in losses for k in names if k in e)  # the loop refuses NaN/Inf
    if family.startswith("stylegan"):
        regularized = [e["step"] for e in losses if "r1_penalty" in e]
        assert regularized == [1, 3]  # steps 0 and 2, logged after them; one of them resumed
        assert losses[-1]["ada_p"] > 0  # ADA's statistics moved p
    if family == "stylegan2":
        assert [e["step"] for e in losses if "pl_penalty" in e] == [1, 3]

    a, _ = runs.load_checkpoint(tmp_path / "split" / "checkpoints" / "step-00000004")
    b, _ = runs.load_checkpoint(tmp_path / "straight" / "checkpoints" / "step-00000004")
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    assert all(v.dtype != torch.bfloat16 for v in a.values())  # weights and optimizer states stay fp32


def test_auto_precision_is_stored_as_what_it_means(tmp_path, faces16):
    result = train(str(tmp_path / "run"), model="dcgan", data=str(faces16), sets={"precision": "auto"},
                   dry_run=True, device="cpu")
    assert result["config"]["train"]["precision"] == "fp32"  # on the CPU
    assert not any(c.startswith("precision") for c in changed_settings({**result["config"], "overrides": {}}))
    with pytest.raises(UserError, match="precision"):
        train(str(tmp_path / "run"), model="dcgan", data=str(faces16), sets={"precision": "fp16"}, dry_run=True,
              device="cpu")


def test_a_run_stored_without_precision_resumes_in_what_auto_means(tmp_path, faces16):
    _train(tmp_path / "run", "dcgan", faces16, 1, precision="auto")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    del config["train"]["precision"]  # as written before precision was a setting
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    _train(tmp_path / "run", "dcgan", faces16, 2, resume=True, precision="fp32")  # fp32 on the CPU: accepted
    with pytest.raises(UserError, match="precision bf16 differs"):
        _train(tmp_path / "run", "dcgan", faces16, 3, resume=True, precision="bf16")


def _objective(family, data):
    spec = registry.get(family)
    config = make_config(spec, str(data), 16, "tiny", SMALLEST[family], seed=0)
    torch.manual_seed(0)
    model = spec.model(config.model_config)
    return spec.objective(model, config.objective_config, TrainContext(torch.device("cpu"))), model


COMPILED_INPUTS = {"dcgan": lambda m: (torch.randn(2, m.config.latent_dim),),
                   "ddpm": lambda m: (torch.randn(2, 3, 16, 16), torch.tensor([3, 40]))}


# Compiling takes ~12 s for the DCGAN generator and ~2 min for the U-Net on the 2-core box.
@pytest.mark.parametrize("family", ["dcgan", pytest.param("ddpm", marks=pytest.mark.slow)])
def test_compiled_networks_compute_what_eager_does(faces16, family):
    """The DCGAN generator and the DDPM denoiser, compiled as `compile=true` does (in place):
    the same state_dict keys, outputs equal to eager within float tolerance."""
    objective, model = _objective(family, faces16)
    keys = list(model.state_dict())
    x = COMPILED_INPUTS[family](model)
    with torch.no_grad():
        eager = model(*x)
        objective.compile()
        compiled = model(*x)
        with objective.eager():
            again = model(*x)
    assert list(model.state_dict()) == keys  # no _orig_mod. prefixes in checkpoints
    assert torch.equal(again, eager)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
