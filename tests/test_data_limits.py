"""The library refuses what the command line refuses (data/limits.py), and `--workers` changes
nothing but the speed."""

import multiprocessing.pool

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from animegen.cli import main
from animegen.data import prepare
from animegen.data.info import dataset_info, export_split
from animegen.data.limits import MAX_BATCH_SIZE
from animegen.settings import MAX_SEED, check_fraction, check_int
from animegen.data.synth import render_faces, synthesize_dataset
from animegen.errors import UserError
from animegen.io import read_json
from animegen.metrics import compare_sources


@pytest.fixture
def faces(tmp_path):
    """12 face PNGs in a folder."""
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, image in enumerate(render_faces(12, 16, seed=3)[0]):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    return folder


@pytest.mark.parametrize("value", [0, 9, -1, True, 3.0, np.float32(2), "5", None])
def test_check_int_refuses_what_is_not_an_integer_in_range(value):
    with pytest.raises(UserError, match=r"^--opt must be an integer from 1 to 8, got "):
        check_int("--opt", value, 1, 8)


def test_check_int_and_check_fraction_accept_numpy_numbers():
    assert check_int("--opt", np.int64(8), 1, 8) == 8 and type(check_int("--opt", np.uint8(1), 1, 8)) is int
    assert check_fraction("--opt", np.float32(0.5)) == 0.5
    for bad in (1, 1.0, -0.1, float("nan"), float("inf"), "0.5", None):
        with pytest.raises(UserError, match=r"^--opt must be a number from 0 up to \(not including\) 1"):
            check_fraction("--opt", bad)


def test_library_functions_check_before_any_work(faces, tmp_path):
    synthesize_dataset(tmp_path / "ds", count=10, resolution=8)
    (tmp_path / "file").write_text("")
    calls = {
        "--resolution": lambda: prepare.prepare_dataset([str(faces)], tmp_path / "out", resolution=2),
        "--workers": lambda: prepare.prepare_dataset([str(faces)], tmp_path / "out", resolution=8, workers=0),
        "--seed": lambda: synthesize_dataset(tmp_path / "out", count=10, resolution=8, seed=MAX_SEED + 1),
        "--count": lambda: render_faces(True, 8),
        "--out": lambda: export_split(tmp_path / "ds", "test", tmp_path / "file" / "png"),
        "--grid": lambda: dataset_info(tmp_path / "ds", grid_path=tmp_path),
        "--batch-size": lambda: compare_sources(faces, faces, batch_size=MAX_BATCH_SIZE + 1, inception_path="none"),
    }
    for option, call in calls.items():
        with pytest.raises(UserError, match=f"{option} "):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "faces", "file"]


def test_workers_change_nothing_but_the_speed(faces, tmp_path, monkeypatch):
    pools = []

    class CountedPool(multiprocessing.pool.Pool):
        def __init__(self, processes):
            pools.append(processes)
            super().__init__(processes)

    monkeypatch.setattr(prepare, "CHUNK", 3)  # 12 files: 4 chunks, so that 2 workers really share them
    monkeypatch.setattr(multiprocessing, "Pool", CountedPool)
    prepare.prepare_dataset([str(faces)], tmp_path / "one", resolution=8, workers=1, progress=False)
    assert pools == []
    result = CliRunner().invoke(main, ["data", "prepare", str(faces), "--out", str(tmp_path / "two"),
                                       "--resolution", "8", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert pools == [2]
    for name in ("train.npy", "test.npy", "manifest.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert read_json(tmp_path / "one" / "manifest.json")["counts"]["kept"] == 12
