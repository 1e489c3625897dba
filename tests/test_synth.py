import json

import numpy as np
import pytest
from click.testing import CliRunner

from animegen.cli import main
from animegen.data.store import load_split, read_manifest, split_indices
from animegen.data.synth import EXPRESSIONS, HAIR_COLORS, HAIR_STYLES, render_faces, synthesize_dataset
from animegen.errors import UserError


@pytest.fixture(scope="module")
def faces():
    return render_faces(200, 32, seed=0)


def test_shapes_dtype_and_labels(faces):
    images, labels = faces
    assert images.shape == (200, 32, 32, 3) and images.dtype == np.uint8
    assert [label["index"] for label in labels] == list(range(200))
    for label in labels:
        assert label["hair_color"] in HAIR_COLORS and label["hair_style"] in HAIR_STYLES
        assert label["expression"] in EXPRESSIONS
        assert json.loads(json.dumps(label)) == {k: list(v) if isinstance(v, tuple) else v for k, v in label.items()}
    # Every category occurs: the generator covers its attribute space.
    assert {label["hair_style"] for label in labels} == set(HAIR_STYLES)
    assert {label["hair_color"] for label in labels} == set(HAIR_COLORS)


def test_faces_are_not_blank(faces):
    images, _ = faces
    std = images.reshape(len(images), -1).astype(float).std(1)
    assert std.min() > 20
    # Pixels take many values: edges are antialiased, not just flat palette fills.
    assert min(len(np.unique(img.reshape(-1, 3), axis=0)) for img in images[:20]) > 150


def test_hair_color_label_matches_pixels(faces):
    """The top centre of the frame is hair; its median colour is nearest the labelled hair colour."""
    images, labels = faces
    names = list(HAIR_COLORS)
    palette = np.array([HAIR_COLORS[n] for n in names], float)
    patch = images[:, 2:6, 12:20].reshape(len(images), -1, 3).astype(float)
    median = np.median(patch, axis=1)
    predicted = [names[i] for i in ((median[:, None] - palette[None]) ** 2).sum(-1).argmin(1)]
    agree = np.mean([p == label["hair_color"] for p, label in zip(predicted, labels)])
    assert agree >= 0.98  # a hair bow or clip may occasionally cover the patch


def test_deterministic_and_independent_of_count(faces):
    images, labels = faces
    again, again_labels = render_faces(7, 32, seed=0)
    np.testing.assert_array_equal(again, images[:7])
    assert again_labels == labels[:7]


def test_different_seeds_differ(faces):
    images, _ = faces
    other, _ = render_faces(20, 32, seed=1)
    assert all(np.abs(a.astype(int) - b).mean() > 5 for a, b in zip(images[:20], other))


def test_rejects_bad_sizes():
    with pytest.raises(UserError):
        render_faces(0, 32)
    with pytest.raises(UserError):
        render_faces(3, 4)


def test_split_indices_partition():
    train, test = split_indices(50, 0.2, seed=3)
    assert len(test) == 10 and len(train) == 40
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(50))
    again = split_indices(50, 0.2, seed=3)
    assert np.array_equal(again[1], test)
    assert not np.array_equal(split_indices(50, 0.2, seed=4)[1], test)
    with pytest.raises(UserError):
        split_indices(50, 1.0, seed=0)


def test_dataset_labels_aligned_with_arrays(tmp_path):
    manifest = synthesize_dataset(tmp_path / "ds", count=30, resolution=16, seed=5, test_fraction=0.2)
    assert manifest["counts"] == {"found": 30, "kept": 30, "train": 24, "test": 6, "duplicates": 0, "skipped": 0}
    images, _ = render_faces(30, 16, seed=5)
    for split in ("train", "test"):
        stored = load_split(tmp_path / "ds", split)
        labels = read_manifest(tmp_path / "ds")["labels"][split]
        assert len(labels) == len(stored)
        np.testing.assert_array_equal(stored, images[[label["index"] for label in labels]])


def test_cli_synth_writes_a_dataset(tmp_path):
    out = tmp_path / "synth"
    result = CliRunner().invoke(main, ["data", "synth", "--out", str(out), "--count", "20", "--resolution", "16"])
    assert result.exit_code == 0, result.output
    assert "16 train, 4 test" in result.output
    assert load_split(out, "train").shape == (16, 16, 16, 3)
    assert read_manifest(out)["resolution"] == 16
    again = CliRunner().invoke(main, ["data", "synth", "--out", str(out), "--count", "20"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_split_refuses_to_leave_no_training_image():
    with pytest.raises(UserError, match="no training image"):
        split_indices(1, 0.6, seed=0)
