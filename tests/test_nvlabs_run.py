"""`animegen import` writes a run folder that sample (with NVIDIA's seed convention), train
--resume and --init-from accept, starting exactly where the NVIDIA snapshot was."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from animegen import runs
from animegen.cli import main
from animegen.data.synth import synthesize_dataset
from animegen.io import to_uint8
from animegen.models import registry
from animegen.nvlabs.networks import import_snapshot
from animegen.training.config import make_config
from animegen.training.ema import make_ema
from animegen.training.nvimport import architecture_settings
from animegen.training.objective import TrainContext
from animegen.training.transfer import init_from
from test_nvlabs_import import FIXTURES, fixture_files

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["--set", "grid_seeds=4", "--set", "batch=4", "--set", "log_every=0", "--set", "tensorboard=false"]


@pytest.fixture(scope="module")
def faces32(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "faces32"
    synthesize_dataset(out, count=20, resolution=32, seed=0, test_fraction=0.2)
    return out


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def import_fixture(name, faces32, out):
    fixture_files(name)  # skips when the fixtures are absent
    return invoke("import", FIXTURES / f"{name}.pkl", "--out", out, "--data", faces32, *SMALL)


@pytest.mark.parametrize("name, flags", [("sg2-ada-32", ["--noise-mode", "const"]), ("sg3t-32", [])])
def test_import_then_sample_with_nvidias_seeds_gives_nvidias_images(tmp_path, faces32, name, flags):
    import_fixture(name, faces32, tmp_path / "run")
    invoke("sample", tmp_path / "run", "--count", 6, "--out", tmp_path / "s", "--device", "cpu",
           "--seed-convention", "nvlabs", *flags)
    _, expected, _ = fixture_files(name)
    images = np.stack([np.asarray(Image.open(tmp_path / "s" / f"seed{s:06d}.png")) for s in range(6)])
    nvidia = to_uint8(expected["img_psi1_const"].clamp(-1, 1))
    assert np.abs(images.astype(int) - nvidia.astype(int)).max() <= 1


def test_a_fine_tune_of_an_import_resumes_exactly_from_the_imported_networks(tmp_path, faces32):
    name = "sg2-32"
    for run in ("split", "straight"):
        import_fixture(name, faces32, tmp_path / run)
    snapshot = import_snapshot(FIXTURES / f"{name}.pkl")
    tensors, state = runs.load_checkpoint(tmp_path / "split", 0)
    for prefix, net in (("model", snapshot.g), ("ema", snapshot.g_ema), ("net.D", snapshot.d)):
        assert all(torch.equal(v, tensors[f"{prefix}.{k}"]) for k, v in net.state_dict().items()), prefix
    assert state["objective"]["ada_p"] == pytest.approx(fixture_files(name)[2]["ada_p"])
    # Step 0's grid is the imported G_ema's.
    grid = np.asarray(Image.open(tmp_path / "split" / "samples" / "step-00000000.png"))
    invoke("sample", tmp_path / "split", "--count", 4, "--out", tmp_path / "s", "--device", "cpu", "--grid",
           tmp_path / "grid.png", "--scale", 1)  # training's grids are 1:1
    assert np.array_equal(grid, np.asarray(Image.open(tmp_path / "grid.png")))
    resume = ["train", "--resume", "--device", "cpu", "--out"]
    invoke(*resume, tmp_path / "split", "--steps", 1)
    invoke(*resume, tmp_path / "split", "--steps", 2)
    invoke(*resume, tmp_path / "straight", "--steps", 2)
    a, _ = runs.load_checkpoint(tmp_path / "split")
    b, state = runs.load_checkpoint(tmp_path / "straight")
    assert state["step"] == 2 and a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert not torch.equal(a["net.D.fromrgb.weight"], tensors["net.D.fromrgb.weight"])  # D was trained too


def test_init_from_a_pickle_loads_every_tensor_including_d():
    pkl = FIXTURES / "sg3r-32.pkl"
    fixture_files("sg3r-32")
    snapshot = import_snapshot(pkl)
    spec = registry.get(snapshot.family)
    config = make_config(spec, "data", 32, "tiny", architecture_settings(snapshot), seed=0)
    model = spec.model(config.model_config)
    objective = spec.objective(model, config.objective_config, TrainContext(torch.device("cpu")))
    report = init_from(pkl, {"model": model, "ema": make_ema(model), "net.D": objective.D})
    assert report["skipped"] == [] and report["model"] == "stylegan3-r"
    assert torch.equal(objective.D.out.weight, snapshot.d.out.weight)


def test_import_refuses_a_dataset_at_another_resolution(tmp_path):
    fixture_files("sg2-32")
    synthesize_dataset(tmp_path / "faces16", count=10, resolution=16, seed=0, test_fraction=0.2)
    result = CliRunner().invoke(main, ["import", str(FIXTURES / "sg2-32.pkl"), "--out", str(tmp_path / "run"),
                                       "--data", str(tmp_path / "faces16")])
    assert result.exit_code == 2 and "prepare the data at 32 px" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_an_import_without_a_dataset_samples_and_takes_one_when_it_trains(tmp_path, faces32):
    fixture_files("sg2-32")
    run = tmp_path / "run"
    invoke("import", FIXTURES / "sg2-32.pkl", "--out", run, *SMALL)
    invoke("sample", run, "--count", 2, "--out", tmp_path / "s", "--device", "cpu")
    assert "none yet" in invoke("runs", "info", run).output
    for command in (["eval", run, "--num", 2], ["train", "--out", run, "--resume", "--steps", 1]):
        result = CliRunner().invoke(main, [str(a) for a in command])
        assert result.exit_code == 2 and "has no dataset" in result.output and "--data" in result.output
    synthesize_dataset(tmp_path / "faces16", count=10, resolution=16, seed=0, test_fraction=0.2)
    result = CliRunner().invoke(main, ["train", "--out", str(run), "--resume", "--steps", "1",
                                       "--data", str(tmp_path / "faces16")])
    assert result.exit_code == 2 and "prepare the data at 32 px" in result.output
    invoke("train", "--out", run, "--resume", "--steps", 1, "--device", "cpu", "--data", faces32)
    config = runs.Run(run).read_config()  # the first dataset became the run's
    assert config["data"] == str(faces32.resolve()) and config["data_hash"]
    invoke("train", "--out", run, "--resume", "--steps", 2, "--device", "cpu")
