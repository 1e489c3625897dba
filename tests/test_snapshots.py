"""FID snapshots say what they cost: reference features computed once (announced with their
count, an estimate and a progress bar, then reused by every later run), CPU counts sized to
a fifth of the training time and recorded, and an ETA that counts the snapshots. The
Inception network is a cheap stand-in (conftest.cheap_inception)."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from animegen.cli import main
from animegen.data.synth import synthesize_dataset
from animegen.training.config import Every
from animegen.training.snapshots import MIN_IMAGES, cpu_counts

pytestmark = pytest.mark.usefixtures("one_thread", "cheap_inception")
FAST = ["--set", "batch=8", "--set", "log_every=1", "--set", "sample_every=0", "--set", "tensorboard=false",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def faces30(tmp_path_factory):
    """30 test images: more than the 8 an estimate is timed on, so the rest show progress."""
    out = tmp_path_factory.mktemp("data") / "faces30"
    synthesize_dataset(out, count=60, resolution=16, seed=1, test_fraction=0.5)
    return out


def _train(*args):
    result = CliRunner().invoke(main, ["train", *map(str, args), *FAST])
    assert result.exit_code == 0, result.output
    return result.output


def test_reference_features_are_announced_once_and_the_eta_counts_snapshots(tmp_path, faces30):
    out = _train("vae", "--data", faces30, "--out", tmp_path / "a", "--steps", 4, "--fid-every", 2)
    # The counts, chosen at the first snapshot (the CPU's minimum: these steps take milliseconds).
    assert f"FID snapshots: {MIN_IMAGES} generated images against 30 of the 30 test images (their features are " \
           "not cached yet), so that the run's 2 snapshots take about" in out
    assert re.search(r"; --fid-every \d+ would keep them near a fifth", out)  # these steps take milliseconds
    train = json.loads((tmp_path / "a" / "config.json").read_text())["train"]
    assert (train["fid_num"], train["fid_real"]) == (MIN_IMAGES, 30)
    # The reference features: count, estimate, where they are kept, then a progress bar.
    announced = re.search(r"reference features: 30 images of .*faces30 \(test split\) are not cached; extracting "
                          r"them takes about \dm\d\ds here \(\d+\.\d img/s, timed on 8\); kept in (\S+)\.npz", out)
    assert announced and Path(announced.group(1) + ".npz").is_file()
    assert re.search(r"reference features:\s+\d+%.*\| *\d+/22", out)  # the bar over the 22 after the timed 8
    assert out.count("reference features: 30 images") == 1 and "reference features: done in" in out
    snapshots = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl") if '"fid"' in line]
    assert [(s["step"], s["num"], s["num_real"]) for s in snapshots] == [(2, MIN_IMAGES, 30), (4, MIN_IMAGES, 30)]
    assert "FID-32" in out and "(32 generated vs 30 test images" in out
    # Every ETA counts the snapshots: before the first, as the share they are sized to; then as timed.
    etas = re.findall(r"step +\d+ .*ETA (\S+) \(snapshots (\S+)\)", out)
    assert len(etas) == 4

    again = _train("vae", "--data", faces30, "--out", tmp_path / "b", "--steps", 2, "--fid-every", 2)
    assert "reference features" not in again  # cached: the second run computes none
    assert "against 30 of the 30 test images, so that" in again  # and takes them all, since they are free


def test_fid_stats_pays_up_front_and_explicit_counts_win(tmp_path, faces30):
    first = CliRunner().invoke(main, ["data", "fid-stats", str(faces30), "--device", "cpu"])
    assert first.exit_code == 0, first.output
    assert "reference features: 30 images" in first.output and "features of 30 images computed in" in first.output
    second = CliRunner().invoke(main, ["data", "fid-stats", str(faces30), "--device", "cpu"])
    assert "already cached" in second.output and "reference features" not in second.output
    out = _train("vae", "--data", faces30, "--out", tmp_path / "run", "--steps", 2, "--fid-every", 2,
                 "--fid-num", 5, "--fid-real", 12)
    assert "reference features" not in out  # the first 12 come from the whole split's entry
    assert "FID snapshots:" not in out and "(5 generated vs 12 test images" in out


def test_cpu_counts():
    # 4 snapshots of 1 s an image (0.3 s of it Inception), 120 s of budget, nothing cached:
    # as many real as generated, the real ones paid once.
    assert cpu_counts(None, None, 5000, False, 4, 1.0, 0.3, 1200.0) == (279, 280)
    assert cpu_counts(None, None, 5000, True, 4, 1.0, 0.3, 1200.0) == (300, 5000)  # cached: the whole split
    assert cpu_counts(1000, None, 5000, False, 4, 1.0, 0.3, 1200.0) == (1000, MIN_IMAGES)  # given: kept
    assert cpu_counts(None, 100, 5000, False, 4, 1.0, 0.3, 1200.0) == (292, 100)
    assert cpu_counts(None, None, 20, False, 1, 1.0, 0.3, 1.0) == (MIN_IMAGES, 20)  # never more than the split


def test_every_counts_the_snapshots_left():
    clock = lambda minutes: {"steps": 0, "kimg": 0, "minutes": minutes}  # noqa: E731
    every = Every("2min")
    assert every.left(clock(0), clock(4)) == 2 and every.left(clock(0), clock(5)) == 3  # a run ends with one
    assert every.left(clock(2), clock(4)) == 1 and every.left(clock(4.5), clock(5)) == 1
    assert Every("0").left(clock(0), clock(4)) == 0


def test_training_starts_without_loading_what_no_step_needs(tmp_path, faces30, monkeypatch):
    """Before the first step: no Inception network (loaded at the first snapshot), and the
    training imports leave scipy, matplotlib and TensorBoard unloaded."""
    import subprocess
    import sys

    import animegen.training.snapshots
    from animegen.training.objectives.vae import VAEObjective

    events, real_step, real_net = [], VAEObjective.train_step, animegen.training.snapshots.InceptionV3
    monkeypatch.setattr(VAEObjective, "train_step", lambda self, *a: events.append("step") or real_step(self, *a))
    monkeypatch.setattr(animegen.training.snapshots, "InceptionV3", lambda **kw: events.append("inception") or real_net(**kw))
    _train("vae", "--data", faces30, "--out", tmp_path / "run", "--steps", 2, "--fid-every", 2)
    assert events == ["step", "step", "inception"]
    code = ("import sys, animegen.cli, animegen.training.loop; "
            "print(sorted(m for m in ('scipy', 'matplotlib', 'torch.utils.tensorboard') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
