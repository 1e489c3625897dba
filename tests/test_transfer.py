"""--init-from: a new run starts from another run's weights, matched by name and shape, even
across datasets and resolutions; what does not match stays fresh and is reported."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from animegen import runs
from animegen.cli import main
from animegen.data.synth import synthesize_dataset
from animegen.errors import UserError
from animegen.training import checkpoint
from animegen.training.config import make_config
from animegen.training.ema import make_ema
from animegen.training.objective import TrainContext
from animegen.training.transfer import init_from
from animegen.training.objectives.stylegan2 import SPEC

QUIET = {"batch": 8, "sample_every": "0", "log_every": "0", "grid_seeds": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


def fresh_modules(resolution, seed=5):
    torch.manual_seed(seed)
    config = make_config(SPEC, "data", resolution, "tiny", {}, seed=0)
    model = SPEC.model(config.model_config)
    objective = SPEC.objective(model, config.objective_config, TrainContext(torch.device("cpu")))
    return {"model": model, "ema": make_ema(model), "net.D": objective.D}


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A 16 px run's checkpoint at step 1 (weights from another seed than `fresh_modules`)."""
    run = tmp_path_factory.mktemp("transfer") / "source"
    tensors = {k: v for p, m in fresh_modules(16, seed=1).items() for k, v in checkpoint.module_tensors(p, m).items()}
    runs.Run(run).save_checkpoint(1, tensors, {"model": "stylegan2", "step": 1}, keep=1)
    return run


def test_same_architecture_loads_everything(source_run):
    modules = fresh_modules(16)
    report = init_from(source_run, modules)
    tensors, _ = runs.load_checkpoint(source_run)
    assert report["skipped"] == [] and report["model"] == "stylegan2" and report["step"] == 1
    for prefix, module in modules.items():
        for name, value in module.state_dict().items():
            assert torch.equal(value, tensors[f"{prefix}.{name}"]), f"{prefix}.{name}"
    assert report["loaded"] == sum(len(m.state_dict()) for m in modules.values())


def test_other_resolution_loads_what_matches_and_reports_the_rest(source_run):
    before = {k: v.clone() for k, v in fresh_modules(32)["model"].state_dict().items()}
    modules = fresh_modules(32)
    report = init_from(source_run, modules)
    tensors, _ = runs.load_checkpoint(source_run)
    model = modules["model"].state_dict()
    # The mapping network and the coarse layers are shared; the new 32 px layers are fresh.
    assert torch.equal(model["mapping.layers.0.weight"], tensors["model.mapping.layers.0.weight"])
    assert torch.equal(model["synthesis.convs.0.weight"], tensors["model.synthesis.convs.0.weight"])
    assert torch.equal(model["synthesis.convs.5.weight"], before["synthesis.convs.5.weight"])
    assert "model.synthesis.convs.5.weight (not in the source)" in report["skipped"]
    assert any(s.startswith("net.D.fromrgb.weight (shape") for s in report["skipped"])
    assert report["loaded"] > 0
    # D blocks meet by resolution: the source's 16 px block (its first) is the target's second.
    d = modules["net.D"].state_dict()
    assert torch.equal(d["blocks.1.conv0.weight"], tensors["net.D.blocks.0.conv0.weight"])
    assert torch.equal(d["blocks.2.conv1.weight"], tensors["net.D.blocks.1.conv1.weight"])


def test_cli_init_from_errors_and_sampling_flags(source_run, tmp_path):
    synthesize_dataset(tmp_path / "faces32", count=20, resolution=32, seed=1, test_fraction=0.2)
    runner = CliRunner()
    args = ["train", "stylegan2", "--data", str(tmp_path / "faces32"), "--out", str(tmp_path / "run"), "--steps", "1",
            "--device", "cpu", "--init-from", str(source_run)] + sum((["--set", f"{k}={v}"] for k, v in QUIET.items()), [])
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "initialized from" in result.output and "kept fresh" in result.output
    report = json.loads((tmp_path / "run" / "init_from.json").read_text())
    assert report["loaded"] > 0 and report["skipped"]
    # Resuming with the same --init-from is the same command line; another source is refused.
    resume = ["train", "--out", str(tmp_path / "run"), "--resume", "--steps", "2", "--init-from"]
    result = runner.invoke(main, resume + [str(source_run)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, resume + [str(tmp_path / "run")])
    assert result.exit_code == 2 and "--init-from" in result.output and "differs from the run's" in result.output
    with pytest.raises(UserError, match="neither a run folder"):
        init_from(tmp_path, fresh_modules(16))
    # The StyleGAN sampling flags reach the model: psi = 0 without noise makes every seed the same image.
    sample = ["sample", str(tmp_path / "run"), "--count", "2", "--device", "cpu", "--truncation", "0",
              "--noise-mode", "none", "--out"]
    result = runner.invoke(main, sample + [str(tmp_path / "flat")])
    assert result.exit_code == 0, result.output
    a, b = (np.asarray(Image.open(p)) for p in sorted((tmp_path / "flat").iterdir()))
    np.testing.assert_array_equal(a, b)
    result = runner.invoke(main, sample + [str(tmp_path / "bad"), "--mix-layer", "2"])
    assert result.exit_code == 2 and "mix_seed" in result.output
