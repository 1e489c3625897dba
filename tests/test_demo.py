import json

import os

import pytest
from click.testing import CliRunner

from animegen.cli import main
from animegen.demo import cpu_threads
from animegen.data.store import load_split, read_manifest


def test_demo_makes_data_trains_samples_then_reuses_them(tmp_path, one_thread):
    out = tmp_path / "demo"
    first = CliRunner().invoke(main, ["demo", "--out", str(out), "--minutes", "0.02"])
    assert first.exit_code == 0, first.output
    assert (out / "data-grid.png").stat().st_size > 1000
    assert load_split(out / "data", "train").shape == (1600, 32, 32, 3)
    assert (out / "samples.png").stat().st_size > 1000
    assert json.loads((out / "run" / "config.json").read_text())["model"] == "dcgan"
    assert "done: step" in first.output and str(out / "samples.png") in first.output
    content = read_manifest(out / "data")["content_hash"]
    second = CliRunner().invoke(main, ["demo", "--out", str(out)])
    assert second.exit_code == 0 and "reusing the dataset" in second.output
    assert "reusing the trained model" in second.output
    assert read_manifest(out / "data")["content_hash"] == content


@pytest.mark.parametrize("load, threads", [(0.2, 4), (1.4, 3), (2.6, 1), (9.0, 1)])
def test_demo_threads_use_the_idle_cores(monkeypatch, load, threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert cpu_threads(default=4) == threads
    assert cpu_threads(default=2) == min(threads, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads(default=3) == 3
