"""benchmarks/peers.py builds its peers to our networks' shapes: NVIDIA's constructor arguments
for a config imported from an NVIDIA snapshot are the ones NVIDIA recorded. (The diffusers peer
holds our U-Net's own weights: tests/test_diffusers_interop.py.)"""

import importlib.util
import json
from pathlib import Path

import pytest

from animegen.models import registry
from animegen.nvlabs.networks import import_snapshot
from animegen.training.config import make_config
from animegen.training.nvimport import architecture_settings
from test_nvlabs_import import FIXTURES, fixture_files

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("peers_bench", REPO / "benchmarks" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_subset(recorded: dict, ours: dict, where: str = "") -> None:
    for key, value in recorded.items():
        if isinstance(value, dict):
            assert_subset(value, ours.get(key, {}), f"{where}{key}.")
        else:
            assert ours.get(key) == pytest.approx(value), f"{where}{key}"


@pytest.mark.parametrize("name", ["sg2-32", "sg3r-32"])
def test_nvlabs_kwargs_of_an_imported_config_are_the_ones_nvidia_recorded(name):
    fixture_files(name)  # skips when the fixtures are absent
    snapshot = import_snapshot(FIXTURES / f"{name}.pkl")
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    config = make_config(registry.get(snapshot.family), "-", 32, "tiny", architecture_settings(snapshot), 0)
    g, d = load_bench().nvlabs_kwargs(snapshot.family, config.model_config, config.objective_config)
    recorded_d = {k: v for k, v in meta["D_init_kwargs"].items() if k not in ("block_kwargs", "mapping_kwargs")}
    assert_subset(meta["G_init_kwargs"], g)
    assert_subset(recorded_d, d)
