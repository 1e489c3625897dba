"""Post-hoc EMA (animegen.posthoc, EDM2): the profiles' algebra, a synthesized length against
a directly tracked EMA of that length, `animegen ema` and its bad inputs, and `eval` /
`compare` recording the length of every number. Exact resume with the profiles on is in
tests/test_training.py (every family)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from animegen import posthoc, runs
from animegen.cli import main
from animegen.compare import run_comparison
from animegen.generate import load_generator
from animegen.training.loop import Target, train

pytestmark = pytest.mark.usefixtures("one_thread")

STORED, DIRECT = [0.05, 0.1], [0.025, 0.075, 0.15, 0.22]  # 0.025: near the tolerance (fit 4.8%)
STEPS, EVERY = 300, 15  # 20 snapshots
QUIET = {"batch": 8, "log_every": "0", "sample_every": "0", "ckpt_every": "0", "tensorboard": False, "grid_seeds": 4}
SMALL = {"dcgan": {"g_channels": 16, "d_channels": 16, "latent_dim": 32}, "vae": {"channels": 8, "latent_dim": 16}}


def _train(run, data, profiles, steps=STEPS, family="dcgan", every=EVERY):
    sets = {**QUIET, **SMALL[family], **({"posthoc_ema": profiles, "posthoc_every": str(every)} if profiles else {})}
    train(str(run), model=family, data=str(data), sets=sets, target=Target(steps=steps), device="cpu", seed=1,
          echo=lambda line: None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, faces16):
    """The same DCGAN run twice: storing EDM2's two profiles, and tracking the lengths to
    synthesize directly."""
    root = tmp_path_factory.mktemp("posthoc")
    _train(root / "stored", faces16, STORED)
    _train(root / "direct", faces16, DIRECT)
    return root


def _relative_rms(a: dict, b: dict) -> float:
    """The largest RMS difference of a float tensor, relative to that tensor's own RMS in `b`."""
    return max(((a[k].double() - b[k].double()).square().mean().sqrt()
                / b[k].double().square().mean().sqrt().clamp_min(1e-12)).item()
               for k in b if b[k].is_floating_point())


# ---------------------------------------------------------------- the profiles
def test_length_and_exponent_are_inverse():
    for sigma_rel in (0.01, 0.05, 0.1, 0.2, 0.28, posthoc.SIGMA_REL_MAX):
        assert posthoc.sigma_rel_of(posthoc.gamma_of(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-6)
    assert posthoc.gamma_of(0.05) == pytest.approx(16.97, abs=0.01)  # EDM2's two stored lengths
    assert posthoc.gamma_of(0.10) == pytest.approx(6.94, abs=0.01)
    assert posthoc.sigma_rel_of(0.0) == pytest.approx(1 / math.sqrt(12))  # the plain average
    assert posthoc.SIGMA_REL_MAX == pytest.approx(0.3003, abs=1e-4)
    assert posthoc.gamma_of(posthoc.SIGMA_REL_MAX) == pytest.approx((math.sqrt(5) - 3) / 2, abs=1e-4)


def test_the_discrete_ema_is_the_continuous_profile():
    """beta_t = (1 - 1/t)^(g+1) gives step i the integral of p_t over (i-1, i]."""
    gamma, t = posthoc.gamma_of(0.1), 50
    ema = torch.zeros(t, dtype=torch.float64)
    for step in range(1, t + 1):
        ema.lerp_(torch.nn.functional.one_hot(torch.tensor(step - 1), t).double(), 1 - posthoc.power_beta(step, gamma))
    i = torch.arange(1, t + 1, dtype=torch.float64)
    torch.testing.assert_close(ema, (i ** (gamma + 1) - (i - 1) ** (gamma + 1)) / t ** (gamma + 1))


def test_a_stored_profile_fits_itself_and_others_approximately():
    steps = np.arange(1, 21) * 15.0
    times, gammas = np.repeat(steps, 2), np.tile([posthoc.gamma_of(s) for s in STORED], 20)
    x, error = posthoc.fit(times, gammas, steps[-1], posthoc.gamma_of(0.1))
    assert error < 1e-6 and x[-1] == pytest.approx(1, abs=1e-6) and x.sum() == pytest.approx(1)
    x, error = posthoc.fit(times, gammas, steps[-1], posthoc.gamma_of(0.075))
    assert error < 0.01 and x.sum() == pytest.approx(1)
    assert posthoc.fit(times, gammas, steps[-1], posthoc.gamma_of(0.01))[1] > posthoc.FIT_TOLERANCE


# ---------------------------------------------------------------- synthesized against tracked
def test_a_synthesized_length_equals_the_directly_tracked_ema(trained):
    """The two runs train the same weights (the profiles change nothing); each length made from
    the stored profiles' 20 snapshots equals the EMA tracked directly to within 1% of the
    weights' scale, far closer than the nearest stored length is."""
    stored, _ = runs.load_checkpoint(trained / "stored")
    direct, _ = runs.load_checkpoint(trained / "direct")
    assert all(torch.equal(stored[k], direct[k]) for k in stored if k.startswith(("model.", "ema.", "net.")))
    basis = posthoc.Basis.of(trained / "stored")
    assert basis.steps == list(range(EVERY, STEPS + 1, EVERY))
    made = [basis.length(s) for s in DIRECT]
    for k, (tensors, state) in enumerate(basis.synthesize(made)):
        tracked = runs.module_state(direct, f"posthoc.{k}")
        error = _relative_rms(runs.module_state(tensors, "ema"), tracked)
        nearest = min(_relative_rms(runs.module_state(stored, f"posthoc.{j}"), tracked) for j in range(2))
        print(f"sigma_rel {DIRECT[k]}: profile fit {made[k].error:.2%}, weights {error:.4%} of their RMS "
              f"(nearest stored length: {nearest:.2%})")
        assert error < 0.01 and error < nearest / 10
        assert state["posthoc"]["sigma_rel"] == DIRECT[k] and state["step"] == STEPS
        buffers = [name for name, value in tracked.items() if "running" in name or not value.is_floating_point()]
        assert buffers and all(torch.equal(tensors[f"ema.{name}"], tracked[name]) for name in buffers)


# ---------------------------------------------------------------- animegen ema
def test_ema_command_writes_a_checkpoint_the_other_commands_read(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "stored", run)
    result = CliRunner().invoke(main, ["ema", str(run), "--length", "0.075", "--length", "0.15"])
    assert result.exit_code == 0, result.output
    assert f"{run}/ema/0.075: EMA length 0.075" in result.output and "from 20 snapshots" in result.output
    assert run.joinpath("ema").is_dir() and sorted(p.name for p in (run / "ema").iterdir()) == ["0.075", "0.15"]
    model, state = load_generator(run, checkpoint="ema:0.075")
    assert state["posthoc"]["snapshots"] == list(range(EVERY, STEPS + 1, EVERY))
    assert state["posthoc"]["profiles"] == STORED and state["checkpoint"] == str((run / "ema" / "0.075").resolve())
    made, _ = posthoc.synthesized(run, 0.075)
    assert all(torch.equal(made[k], v) for k, v in runs.read_checkpoint(run / "ema" / "0.075")[0].items())
    sample = CliRunner().invoke(main, ["sample", str(run), "--checkpoint", "ema:0.15", "--count", "2",
                                       "--out", str(tmp_path / "s"), "--device", "cpu"])
    assert sample.exit_code == 0 and "ema/0.15" in sample.output, sample.output
    assert "ema:0.075, ema:0.15" in CliRunner().invoke(main, ["runs", "info", str(run)]).output
    out = CliRunner().invoke(main, ["ema", str(run), "--length", "0.1", "--out", str(tmp_path / "elsewhere")])
    assert out.exit_code == 0 and (tmp_path / "elsewhere" / "0.1" / runs.STATE).is_file()


@pytest.fixture(scope="module")
def bad_runs(trained, tmp_path_factory, faces16):
    """A run without profiles, one whose snapshots are gone, and one with a single snapshot."""
    root = tmp_path_factory.mktemp("bad")
    _train(root / "plain", faces16, None, steps=2)
    shutil.copytree(trained / "stored", root / "none")
    shutil.rmtree(root / "none" / "posthoc")
    _train(root / "one", faces16, STORED, steps=10)
    return root


@pytest.mark.parametrize("args, message", [
    (["{stored}", "--length", "0.5"], "--length 0.5 is not an EMA length: sigma_rel must be in [0.0001, 0.30028]"),
    (["{stored}", "--length", "0.3003"], "is not an EMA length"),
    (["{stored}", "--length", "1e-300"], "is not an EMA length"),
    (["{stored}", "--length", "0"], "is not an EMA length"),
    (["{stored}", "--length", "nan"], "is not an EMA length"),
    (["{stored}", "--length", "0.1", "--length", "-1"], "is not an EMA length"),
    (["{stored}", "--length", "0.005"], "miss its averaging profile by"),
    (["{stored}", "--length", "0.1", "--out", "{stored}"], "already exists"),
    (["{bad}/plain", "--length", "0.1"], "was trained without post-hoc EMA profiles"),
    (["{bad}/none", "--length", "0.1"], "has no post-hoc snapshot yet"),
    (["{bad}/one", "--length", "0.2"], "the 1 post-hoc snapshots"),
    (["{bad}/nowhere", "--length", "0.1"], "holds no run"),
    (["{stored}"], "Missing option '--length'"),
])
def test_ema_command_bad_input_is_one_line_and_writes_nothing(trained, bad_runs, args, message):
    args = [a.format(stored=trained / "stored", bad=bad_runs) for a in args]
    before = sorted(p for root in (trained, bad_runs) for p in root.rglob("*"))
    result = CliRunner().invoke(main, ["ema", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p for root in (trained, bad_runs) for p in root.rglob("*")) == before


def test_too_few_snapshots_say_what_they_can_represent(bad_runs):
    with pytest.raises(Exception, match=r"they represent lengths from 0\.0\d+ to 0\.1\d+"):
        posthoc.Basis.of(bad_runs / "one").length(0.2)
    assert posthoc.Basis.of(bad_runs / "one").length(0.06).error < posthoc.FIT_TOLERANCE


# ---------------------------------------------------------------- eval and compare record the length
def test_eval_sweeps_lengths_and_records_each(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "stored", run)
    result = CliRunner().invoke(main, ["eval", str(run), "--num", "4", "--device", "cpu", "--json",
                                       "--ema-length", "0.075,0.15"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["protocol"]["ema_length"] for r in lines] == [0.075, 0.15]
    assert lines[0]["fid"] != lines[1]["fid"] and lines[0]["protocol"]["posthoc"]["snapshots"][-1] == STEPS
    events = [e for e in runs.Run(run).read_metrics() if e["event"] == "eval"]
    assert [e["protocol"]["ema_length"] for e in events] == [0.075, 0.15]
    plain = CliRunner().invoke(main, ["eval", str(run), "--num", "4", "--device", "cpu", "--json", "--no-record"])
    assert json.loads(plain.stdout)["protocol"]["ema_length"] is None  # the run's ema_kimg EMA
    for bad, message in ((["--ema-length", "0.075,0.005"], "--ema-length 0.005"),
                         (["--ema-length", "x"], "not a comma-separated list"),
                         (["--ema-length", "0.1", "--checkpoint", str(STEPS)], "not both")):
        result = CliRunner().invoke(main, ["eval", str(run), "--num", "4", "--device", "cpu", "--json", *bad])
        assert result.exit_code == 2 and message in result.output, result.output
    assert len([e for e in runs.Run(run).read_metrics() if e["event"] == "eval"]) == 2  # the refused: none


def test_compare_sweeps_lengths_per_run(trained, tmp_path, faces16):
    shutil.copytree(trained / "stored", tmp_path / "dcgan")
    _train(tmp_path / "vae", faces16, STORED, steps=40, family="vae", every=4)
    lines = []
    results = run_comparison(None, str(tmp_path / "cmp"), runs_given=[str(tmp_path / "dcgan"), str(tmp_path / "vae")],
                             fid_num=4, repeats=1, device="cpu", nfe_steps=(), ema_lengths=(0.075, 0.1),
                             echo=lines.append)
    assert results["protocol"]["ema_lengths"] == [0.075, 0.1]
    for family in ("dcgan", "vae"):
        sweep = results["models"][family]["ema_sweep"]
        assert [p["ema_length"] for p in sweep] == [0.075, 0.1] and all(p["fid"] > 0 and p["num"] == 4 for p in sweep)
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["models"]["vae"]["ema_sweep"] == \
        results["models"]["vae"]["ema_sweep"]
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "## FID-4 against post-hoc EMA length" in report and "| model | 0.075 | 0.1 | ema_kimg EMA |" in report
    assert (tmp_path / "cmp" / "ema_lengths.png").stat().st_size > 1000
    refused = CliRunner().invoke(main, ["compare", "--out", str(tmp_path / "cmp2"), "--runs", str(tmp_path / "vae"),
                                        "--fid-num", "4", "--ema-lengths", "0.075,0.005"])
    assert refused.exit_code == 2 and "--ema-lengths 0.005" in refused.output and not (tmp_path / "cmp2").exists()
