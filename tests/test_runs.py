"""The run folder's lifecycle (animegen.runs and the loop through it): pruning, restarts of
runs that never reached a checkpoint, removal of what interrupted writes leave, damaged
checkpoints, the dataset's identity, resume options, FID preflight, TensorBoard purging,
signals, `runs info`, `--dry-run` and the training lock. Tiny VAEs at 16 px."""

import json
import shutil
import signal
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from animegen import runs
from animegen.cli import main
from animegen.data.synth import synthesize_dataset
from animegen.errors import UserError
from animegen.generate import load_generator, write_samples
from animegen.models import registry
from animegen.training.config import make_config
from animegen.training.loop import Target, train
from animegen.training.objectives.stylegan2 import r1_gamma_heuristic

SMALL = {"batch": 8, "channels": 8, "max_channels": 16, "latent_dim": 8, "log_every": "1", "sample_every": "0",
         "ckpt_every": "2", "keep": 2, "tensorboard": False}

pytestmark = pytest.mark.usefixtures("one_thread")



def _train(run, data, steps, resume=False, lines=None, **sets):
    return train(str(run), model="vae", data=str(data), sets={**SMALL, **sets}, seed=3, resume=resume,
                 target=Target(steps=steps), device="cpu", echo=(lines.append if lines is not None else lambda _: None))


def _cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _garble(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- keep and pruning
def test_keep_must_be_at_least_one(tmp_path, faces16):
    with pytest.raises(UserError, match=r"keep=0 is out of range"):
        make_config(registry.get("vae"), "d", 16, "tiny", {"keep": 0}, 0)
    code, out = _cli("train", "vae", "--data", faces16, "--out", tmp_path / "run", "--steps", 1, "--set", "keep=0")
    assert code == 2 and "keep=0" in out and not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="at least the newest"):
        runs.Run(tmp_path / "r").save_checkpoint(1, {"w": torch.zeros(1)}, {}, keep=0)


def test_the_checkpoint_just_written_is_never_pruned(tmp_path):
    run = runs.Run(tmp_path / "run")
    for step, fid in ((1, 5.0), (2, 9.0), (3, 8.0)):
        run.save_checkpoint(step, {"w": torch.full((1,), float(step))}, {"snapshot": {"fid": fid}}, keep=1)
    assert run.steps() == [1, 3]  # the best (FID 5) and the newest, although keep=1
    assert runs.resolve_checkpoint(run.path).name == "step-00000003"
    assert runs.resolve_checkpoint(run.path, "best").name == "step-00000001"
    # After a fallback from a damaged step 9, step 4 is written while 9 still sits there: 4 stays.
    run.save_checkpoint(9, {"w": torch.zeros(1)}, {}, keep=1)
    run.save_checkpoint(4, {"w": torch.zeros(1)}, {}, keep=1)
    assert run.steps() == [1, 4, 9]


# ---------------------------------------------------------------- runs that never reached a checkpoint
def test_a_run_that_failed_before_its_first_checkpoint_starts_again(tmp_path, faces16, monkeypatch):
    from animegen.training.objectives.vae import VAEObjective

    real_step = VAEObjective.train_step

    def crash(self, real, step):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 GB")

    monkeypatch.setattr(VAEObjective, "train_step", crash)
    args = ["train", "vae", "--data", faces16, "--out", tmp_path / "run", "--steps", 2, "--device", "cpu"]
    code, out = _cli(*args)
    assert code == 2 and out.strip().splitlines()[-1].startswith("error: out of memory") and "Traceback" not in out
    assert (tmp_path / "run" / "config.json").is_file() and not runs.Run(tmp_path / "run").steps()
    monkeypatch.setattr(VAEObjective, "train_step", real_step)
    code, out = _cli(*args)
    assert code == 0, out
    assert "stopped before its first checkpoint: starting it again" in out
    # And --resume starts such a run from step 0, saying so.
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    code, out = _cli("train", "--out", tmp_path / "run", "--resume", "--steps", 2)
    assert code == 0 and "no checkpoint yet: starting from step 0" in out, out
    # --resume with the whole command line on an empty folder starts the run.
    code, out = _cli(*args[:5], tmp_path / "new", "--steps", 1, "--resume")
    assert code == 0 and "holds no run yet: starting a new one" in out, out


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, faces16):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    code, out = _cli("train", "vae", "--data", faces16, "--out", tmp_path / "notes", "--steps", 1)
    assert code == 2 and "is not a run folder" in out
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]


# ---------------------------------------------------------------- interrupted writes
def test_leftovers_of_interrupted_writes_are_removed_and_never_taken_for_checkpoints(tmp_path, faces16):
    run = runs.Run(tmp_path / "run")
    _train(run.path, faces16, 2)
    (run.checkpoints / ".step-00000004.tmp-abc").mkdir()
    (run.checkpoints / ".step-00000004.tmp-abc" / runs.TENSORS).write_bytes(b"half")
    (run.checkpoints / ".last.tmp-999").symlink_to("step-00000004")
    (run.checkpoints / "best").symlink_to("step-00000077")  # points nowhere
    (run.path / ".metrics.jsonl.tmp-xyz").write_text("{")
    assert run.steps() == [2]
    lines = []
    _train(run.path, faces16, 3, resume=True, lines=lines)
    assert any("removed what an interrupted run left" in line for line in lines)
    leftovers = [p.name for p in run.path.rglob("*") if ".tmp-" in p.name or p.name == "best"]
    assert leftovers == []
    assert run.steps() == [2, 3]


# ---------------------------------------------------------------- damaged checkpoints
def test_a_garbled_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, faces16):
    run = runs.Run(tmp_path / "run")
    _train(run.path, faces16, 4)
    _garble(run.checkpoints / "step-00000004" / runs.TENSORS)
    code, out = _cli("sample", run.path, "--count", 1, "--out", tmp_path / "s", "--device", "cpu")
    assert code == 2 and len(out.strip().splitlines()) == 1
    assert "step-00000004/tensors.safetensors is damaged" in out and not (tmp_path / "s").exists()
    code, out = _cli("sample", run.path, "--count", 1, "--out", tmp_path / "s", "--checkpoint", 2, "--device", "cpu")
    assert code == 0, out
    lines = []
    summary = _train(run.path, faces16, 6, resume=True, lines=lines)
    assert any("skipping an unreadable checkpoint" in line and "step-00000004" in line for line in lines)
    assert any("resuming from the newest readable one, step 2" in line for line in lines)
    assert (run.checkpoints / runs.DAMAGED / "step-00000004" / runs.TENSORS).is_file()  # set aside, not counted
    # From step 2 to 6 equals a straight run: the damaged step 4 was trained and written again.
    _train(tmp_path / "straight", faces16, 6)
    a, b = runs.load_checkpoint(run.path)[0], runs.load_checkpoint(tmp_path / "straight")[0]
    assert summary["step"] == 6 and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage", ["truncated tensors", "garbled state", "missing state"])
def test_a_damaged_checkpoint_is_named_in_one_line(tmp_path, faces16, damage):
    _train(tmp_path / "run", faces16, 2)
    folder = tmp_path / "run" / "checkpoints" / "step-00000002"
    if damage == "truncated tensors":
        (folder / runs.TENSORS).write_bytes((folder / runs.TENSORS).read_bytes()[:100])
    elif damage == "garbled state":
        (folder / runs.STATE).write_text('{"format": "animegen-checkpoint/1", "step": ')
    else:
        (folder / runs.STATE).unlink()
    for command in (["sample", tmp_path / "run", "--count", 1, "--out", tmp_path / "s"],
                    ["eval", tmp_path / "run", "--num", 2],
                    ["train", "--out", tmp_path / "run", "--resume", "--steps", 3]):
        code, out = _cli(*command)
        assert code == 2 and len(out.strip().splitlines()) == 1 and "Traceback" not in out, out
        assert "step-00000002" in out and ("damaged" in out or "missing" in out), out


# ---------------------------------------------------------------- the dataset's identity
def test_a_re_prepared_dataset_is_refused_and_a_moved_copy_accepted(tmp_path, faces16, monkeypatch):
    data = tmp_path / "faces"
    shutil.copytree(faces16, data)
    _train(tmp_path / "run", data, 2)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data_hash"] == json.loads((data / "manifest.json").read_text())["content_hash"]
    assert config["resolution"] == 16
    shutil.copytree(data, tmp_path / "moved")
    shutil.rmtree(data)
    synthesize_dataset(data, count=40, resolution=16, seed=1, test_fraction=0.2)  # same path, other faces
    for command in (["eval", tmp_path / "run", "--num", 2], ["train", "--out", tmp_path / "run", "--resume",
                                                              "--steps", 3]):
        code, out = _cli(*command)
        assert code == 2 and "is not the dataset" in out and "prepared again" in out, out
    import animegen.generate

    monkeypatch.setattr(animegen.generate, "evaluate_generator", lambda batches, real, **kw: {"fid": 1.0})
    result = animegen.generate.evaluate_run(str(tmp_path / "run"), ["fid"], 2, device="cpu", data=tmp_path / "moved")
    assert result["protocol"]["real"] == str((tmp_path / "moved").resolve())
    code, out = _cli("train", "--out", tmp_path / "run", "--resume", "--steps", 3, "--data", tmp_path / "moved")
    assert code == 0, out
    code, out = _cli("eval", tmp_path / "run", "--num", 2, "--data", data)
    assert code == 2 and "is not the dataset" in out


# ---------------------------------------------------------------- resume options
def test_resume_accepts_the_same_options_and_names_a_differing_one(tmp_path, faces16):
    sets = sum((["--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"] for k, v in SMALL.items()), [])
    first = ["train", "vae", "--data", faces16, "--out", tmp_path / "run", "--preset", "tiny", "--seed", 3, *sets]
    assert _cli(*first, "--steps", 2)[0] == 0
    code, out = _cli(*first, "--steps", 4, "--resume")
    assert code == 0 and "from step 2 to 4 steps" in out, out
    for extra, named in ((["--set", "batch=16"], "--set batch 16 differs from the run's 8"),
                         (["--seed", "4"], "--seed 4 differs from the run's 3"),
                         (["--preset", "paper64"], "--preset paper64 differs from the run's tiny")):
        code, out = _cli(*first, "--steps", 6, "--resume", *extra)
        assert code == 2 and named in out, out
    code, out = _cli("train", "dcgan", "--out", tmp_path / "run", "--steps", 6, "--resume")
    assert code == 2 and "MODEL dcgan differs from the run's vae" in out


def test_snapshot_settings_changed_at_resume_are_recorded_and_kept(tmp_path, faces16, cheap_inception):
    """`--resume --fid-every 0` turns snapshots off for good: config.json records it (and
    when), `runs info` shows it, and a later plain --resume does not switch them back on."""
    run = tmp_path / "run"
    sets = ["--set", "batch=8", "--set", "sample_every=0", "--device", "cpu"]
    assert _cli("train", "vae", "--data", faces16, "--out", run, "--steps", 2, "--fid-every", 2, *sets)[0] == 0
    code, out = _cli("train", "--out", run, "--resume", "--steps", 4, "--fid-every", 0, "--fid-num", 40)
    assert code == 0 and "changed on resume (recorded in config.json): fid_every 2 -> off, fid_num 32 -> 40" in out
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["fid_every"] is None and config["train"]["fid_num"] == 40
    assert config["resumed_changes"] == [{"step": 2, "fid_every": ["2", None], "fid_num": [32, 40]}]
    code, out = _cli("train", "--out", run, "--resume", "--steps", 6)
    assert code == 0 and "changed on resume" not in out
    assert [e["step"] for e in runs.Run(run).read_metrics() if e["event"] == "fid"] == [2]
    info = json.loads(_cli("runs", "info", run, "--json")[1])
    assert info["changed_on_resume"] == ["step 2: fid_every 2 -> off, fid_num 32 -> 40"]
    assert "fid_num=40" in info["changed_settings"]


# ---------------------------------------------------------------- preflight
def test_fid_snapshots_check_the_inception_file_and_test_split_before_step_0(tmp_path, faces16, monkeypatch):
    monkeypatch.setenv("ANIMEGEN_INCEPTION", str(tmp_path / "nowhere.pt"))
    code, out = _cli("train", "vae", "--data", faces16, "--out", tmp_path / "run", "--steps", 1, "--fid-every", 1)
    assert code == 2 and "Inception weights" in out and "not found" in out
    assert not (tmp_path / "run").exists()


def test_family_resolution_rule_lists_what_it_accepts(tmp_path):
    synthesize_dataset(tmp_path / "faces24", count=20, resolution=24, seed=0, test_fraction=0.2)
    code, out = _cli("train", "stylegan2", "--data", tmp_path / "faces24", "--out", tmp_path / "run", "--steps", 1)
    assert code == 2 and "stylegan2 cannot train at 24 px" in out and "8, 16, 32, 64" in out
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- TensorBoard
def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path, faces16):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = runs.Run(tmp_path / "run")
    _train(run.path, faces16, 5, tensorboard=True)
    shutil.rmtree(run.checkpoints / "step-00000005")  # as if killed after logging steps 5 but saving only 4
    time.sleep(1.1)  # a new events file (they are named by the second)
    _train(run.path, faces16, 6, resume=True, tensorboard=True)
    events = EventAccumulator(str(run.path / runs.TENSORBOARD))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/loss")] == [1, 2, 3, 4, 5, 6]
    logged = [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()
              if json.loads(line)["event"] == "train"]
    assert logged == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------- signals
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_abandons_a_snapshot_writes_the_checkpoint_and_exits_128_plus_signum(tmp_path, faces16,
                                                                                       monkeypatch, signum,
                                                                                       cheap_inception):
    import animegen.training.snapshots

    def slow_snapshot(batches, **kw):  # a CPU FID snapshot takes minutes
        next(iter(batches))
        signal.raise_signal(signum)
        time.sleep(60)
        raise AssertionError("the snapshot was not abandoned")

    monkeypatch.setattr(animegen.training.snapshots, "evaluate_generator", slow_snapshot)
    before = signal.getsignal(signum)  # SIG_IGN when pytest itself runs in a background job
    t0 = time.perf_counter()
    code, out = _cli("train", "vae", "--data", faces16, "--out", tmp_path / "run", "--steps", 50, "--device", "cpu",
                     "--fid-every", 3, "--set", "ckpt_every=100")
    assert time.perf_counter() - t0 < 30
    assert code == 128 + signum, out
    assert "FID snapshot at step 3 abandoned" in out and f"stopped by {signal.Signals(signum).name}" in out
    assert runs.Run(tmp_path / "run").steps() == [3]
    assert signal.getsignal(signum) == before  # the loop put the handler back


def test_a_signal_during_the_step_reduction_is_not_lost(tmp_path, faces16, monkeypatch):
    from animegen.training import distributed

    real = distributed.mean_over_ranks
    calls = []

    def reduce_then_signal(ctx, values):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGTERM)  # after the stop flag was read into `values`
        return real(ctx, values)

    monkeypatch.setattr(distributed, "mean_over_ranks", reduce_then_signal)
    summary = _train(tmp_path / "run", faces16, 50, ckpt_every="100")  # no checkpoint's agreement to mask it
    assert summary["signal"] == signal.SIGTERM and summary["step"] == 2


# ---------------------------------------------------------------- sample, info, dry run, lock
def test_sample_streams_images_to_disk(tmp_path, faces16, monkeypatch):
    _train(tmp_path / "run", faces16, 1)
    from animegen.models.vae import VAE

    real_render = VAE.render
    written = []

    def render(self, latents, noise, **options):
        written.append(len(list(tmp_path.glob(".out.tmp-*/*.png"))))
        return real_render(self, latents, noise, **options)

    monkeypatch.setattr(VAE, "render", render)
    write_samples(str(tmp_path / "run"), str(tmp_path / "out"), 10, batch_size=3, device="cpu")
    assert written == [0, 3, 6, 9] and len(list((tmp_path / "out").iterdir())) == 10
    code, out = _cli("sample", tmp_path / "run", "--count", 2000, "--grid", tmp_path / "g.png", "--out", tmp_path / "x")
    assert code == 2 and "too large" in out and not (tmp_path / "x").exists()


def test_runs_info_and_dry_run(tmp_path, faces16):
    code, out = _cli("train", "vae", "--data", faces16, "--out", tmp_path / "run", "--dry-run", "--set", "lr=0.002")
    assert code == 0, out
    plan = json.loads(out)
    assert plan["parameters"]["model"] > 0 and plan["config"]["objective_config"]["lr"] == 0.002
    assert not (tmp_path / "run").exists()
    _train(tmp_path / "run", faces16, 4)
    code, out = _cli("runs", "info", tmp_path / "run", "--json")
    assert code == 0, out
    info = json.loads(out)
    assert info["family"] == "vae" and info["preset"] == "tiny" and info["step"] == 4
    assert info["checkpoints"] == ["step 2", "step 4"] and "present, unchanged" in info["dataset"]
    assert "channels=8" in info["changed_settings"] and "batch=8" in info["changed_settings"]
    assert not any(s.startswith("lr=") for s in info["changed_settings"])
    code, out = _cli("runs", "info", tmp_path / "nothing")
    assert code == 2 and "holds no run" in out


@pytest.mark.parametrize("family", registry.names())
def test_dry_run_prints_the_values_the_run_uses(tmp_path, faces16, family):
    """No null where the run computes a value: StyleGAN's R1 weight is the family's rule at this
    resolution and batch, unset snapshot counts say how they will be chosen; the nulls left
    mean "off" (an activation clamp)."""
    code, out = _cli("train", family, "--data", faces16, "--out", tmp_path / "run", "--dry-run", "--fid-every", "2min",
                     "--device", "cpu")
    assert code == 0, out
    config = json.loads(out)["config"]
    nulls = {key for section in ("model_config", "objective_config", "train") for key, value in config[section].items()
             if value is None}
    assert nulls <= {"conv_clamp", "d_conv_clamp", "posthoc_ema"}, nulls  # each null means off
    assert "chosen at the first snapshot" in config["train"]["fid_num"]
    if family == "stylegan2":
        assert config["objective_config"]["r1_gamma"] == pytest.approx(r1_gamma_heuristic(16, config["train"]["batch"]))
    elif family.startswith("stylegan3"):  # its own rule: R^2 / 32768 at batch 32
        assert config["objective_config"]["r1_gamma"] == pytest.approx(16**2 / 32768 * 32 / config["train"]["batch"])


def test_one_trainer_per_run(tmp_path, faces16):
    _train(tmp_path / "run", faces16, 1)
    with runs.Run(tmp_path / "run").lock():
        with pytest.raises(UserError, match="being trained by another process"):
            _train(tmp_path / "run", faces16, 2, resume=True)
    assert _train(tmp_path / "run", faces16, 2, resume=True)["step"] == 2


def test_checkpoint_choice_for_sample_and_eval(tmp_path, faces16):
    _train(tmp_path / "run", faces16, 4)
    assert load_generator(tmp_path / "run", checkpoint=2)[1]["step"] == 2
    folder = tmp_path / "run" / "checkpoints" / "step-00000002"
    assert load_generator(tmp_path / "run", checkpoint=str(folder))[1]["step"] == 2
    assert load_generator(folder)[1]["step"] == 2
    for which, message in ((3, "no checkpoint of step 3 (kept: 2, 4)"), ("best", "no best checkpoint"),
                           ("newest", "not a checkpoint folder")):
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_generator(tmp_path / "run", checkpoint=which)
    a = load_generator(tmp_path / "run", checkpoint="last")[0]
    b = load_generator(tmp_path / "run", checkpoint=4)[0]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert np.isfinite(next(a.parameters()).detach().numpy()).all()


def test_metrics_reader_leaves_out_a_line_a_kill_cut_short(tmp_path):
    run = runs.Run(tmp_path / "run")
    assert run.read_metrics() == []  # no file yet
    run.path.mkdir()
    run.append_metrics({"event": "train", "step": 1})
    run.append_metrics({"event": "fid", "step": 2, "fid": 9.5})
    with open(run.metrics, "a", encoding="utf-8") as f:
        f.write('{"event": "train", "st')  # the write a SIGKILL interrupted
    assert run.read_metrics() == [{"event": "train", "step": 1}, {"event": "fid", "step": 2, "fid": 9.5}]
