"""`data info` and `data export` on small prepared datasets."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from animegen.cli import main
from animegen.data.info import dataset_info, export_split
from animegen.data.prepare import prepare_dataset
from animegen.data.store import write_dataset
from animegen.errors import UserError
from animegen.io import read_json

R = 8


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (10, R, R, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (12, R, R, 3), dtype=np.uint8)
    manifest = {"kind": "prepared", "sources": ["/data/a.zip", "/data/b.zip"], "resolution": R, "seed": 7,
                "counts": {"found": 25, "kept": 22, "train": 10, "test": 12, "duplicates": 1, "skipped": 2}}
    path = write_dataset(tmp_path / "ds", train, test, manifest)
    return path, train, test


def test_info_reports_counts_and_writes_the_grid_beside_the_dataset(dataset, tmp_path):
    path, train, test = dataset
    info = dataset_info(path)
    assert {k: info[k] for k in ("kind", "resolution", "train", "test", "found", "duplicates", "skipped", "seed")} == {
        "kind": "prepared", "resolution": R, "train": 10, "test": 12, "found": 25, "duplicates": 1, "skipped": 2, "seed": 7}
    assert info["sources"] == "a.zip, b.zip"
    assert info["grid"] == str(tmp_path / "ds-samples.png")
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "test.npy", "train.npy"]  # unchanged

    grid = np.asarray(Image.open(info["grid"]))  # 22 images, 8 columns, 2 px gaps: 8 x 3 tiles
    assert grid.shape == (3 * (R + 2) + 2, 8 * (R + 2) + 2, 3)
    assert np.array_equal(grid[2 : 2 + R, 2 : 2 + R], train[0])
    tile = lambda i: grid[2 + (i // 8) * (R + 2) :][:R, 2 + (i % 8) * (R + 2) :][:, :R]  # noqa: E731
    assert np.array_equal(tile(9), train[9]) and np.array_equal(tile(10), test[0]) and np.array_equal(tile(21), test[11])


def test_info_grid_path_and_cli(dataset, tmp_path):
    path, _, _ = dataset
    result = CliRunner().invoke(main, ["data", "info", str(path), "--grid", str(tmp_path / "g.png"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["train"] == 10 and info["grid"] == str(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").format == "PNG"


def test_info_counts_of_a_prepared_folder(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (R, R, 3), dtype=np.uint8)).save(tmp_path / "in" / f"{i}.png")
    (tmp_path / "in" / "copy.png").write_bytes((tmp_path / "in" / "0.png").read_bytes())
    (tmp_path / "in" / "junk.png").write_bytes(b"junk")
    manifest = prepare_dataset([str(tmp_path / "in")], tmp_path / "ds", resolution=R, progress=False)
    info = dataset_info(tmp_path / "ds")
    assert (info["found"], info["train"], info["test"], info["duplicates"], info["skipped"]) == (8, 5, 1, 1, 1)
    assert info["content_hash"] == manifest["content_hash"]


def test_info_rejects_a_dataset_whose_manifest_disagrees_with_its_arrays(dataset):
    path, _, _ = dataset
    manifest = read_json(path / "manifest.json")
    manifest["counts"]["test"] = 11
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="inconsistent"):
        dataset_info(path)


def test_export_writes_png_files_that_round_trip_exactly(dataset, tmp_path):
    path, train, test = dataset
    assert export_split(path, "test", tmp_path / "png") == 12
    names = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert names == [f"{i:02d}.png" for i in range(12)]
    back = np.stack([np.asarray(Image.open(tmp_path / "png" / n)) for n in names])
    assert np.array_equal(back, test)
    assert export_split(path, "train", tmp_path / "png-train") == 10
    assert np.array_equal(np.asarray(Image.open(tmp_path / "png-train" / "9.png")), train[9])


def test_export_refuses_an_existing_output_and_leaves_no_partial_folder(dataset, tmp_path, monkeypatch):
    path, _, _ = dataset
    (tmp_path / "taken").mkdir()
    with pytest.raises(UserError, match="already exists"):
        export_split(path, "test", tmp_path / "taken")
    calls = []

    def save_then_fail(self, fp, *args, **kw):
        calls.append(fp)
        if len(calls) == 5:
            raise OSError("disk full")
        return real_save(self, fp, *args, **kw)

    real_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        export_split(path, "test", tmp_path / "partial")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "taken"]


def test_bad_dataset_paths_are_user_errors(tmp_path):
    (tmp_path / "plain").mkdir()
    for bad in (tmp_path / "missing", tmp_path / "plain"):
        with pytest.raises(UserError, match="not a prepared dataset"):
            dataset_info(bad)
        with pytest.raises(UserError, match="not a prepared dataset"):
            export_split(bad, "test", tmp_path / "out")
    for args in (["data", "info", str(tmp_path / "missing")],
                 ["data", "export", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2
        assert result.stderr.count("\n") == 1 and "not a prepared dataset" in result.stderr
    assert not (tmp_path / "out").exists()
