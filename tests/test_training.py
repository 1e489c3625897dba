"""The training core: exact resume for every family, checkpoint round trips, the run
folder, settings, NaN stops, and sampling determinism. Tiny models at 16 px."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from animegen import runs
from animegen.cli import main
from animegen.errors import UserError
from animegen.generate import load_generator, sample_grid
from animegen.models import registry
from animegen.training import checkpoint
from animegen.training.config import TrainConfig, field_names, make_config, parse_sets
from animegen.training.loop import Target, train

FAMILIES = registry.names()
# Small and fast; sample/ckpt intervals fire mid-run so resume is tested across them.
FAST = {"batch": 8, "log_every": "2", "sample_every": "2", "ckpt_every": "2", "grid_seeds": 4, "keep": 10}
POSTHOC = {"posthoc_ema": [0.05, 0.1], "posthoc_every": "2"}
SMALLER = {"ddpm": {"base_channels": 16, "channel_mults": [1, 2], "attention_resolutions": [8], "num_groups": 4,
                    "time_embed_dim": 32, "timesteps": 50, "sample_steps": 2},
            "edm": {"base_channels": 16, "channel_mults": [1, 2], "attention_resolutions": [8], "num_groups": 4,
                    "time_embed_dim": 32, "sample_steps": 2},
            # A target below any r_t makes ADA's p rise every 2 steps, so resume covers p and its statistics.
            "stylegan2": {"ada_target": -1.0, "ada_kimg": 0.05, "ada_interval": 2}}


pytestmark = pytest.mark.usefixtures("one_thread")



def _train(run, family, data, steps, resume=False, **sets):
    if resume:  # a resumed run keeps its config.json
        return train(str(run), target=Target(steps=steps), resume=True, device="cpu", echo=lambda line: None)
    return train(str(run), model=family, data=str(data), sets={**FAST, **SMALLER.get(family, {}), **sets},
                 target=Target(steps=steps), device="cpu", seed=3, echo=lambda line: None)


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_is_exact(tmp_path, faces16, family):
    """3 steps, then resume to 6 == 6 straight, weight for weight: model, EMA, post-hoc EMAs,
    auxiliary nets, optimizer states, RNG and data position; the mid-run checkpoint equals the
    one a run ending there writes (so a kill after it loses nothing); so do the post-hoc
    snapshots (every 2 steps, and at the end of each leg)."""
    _train(tmp_path / "split", family, faces16, 3, ckpt_every="3", **POSTHOC)
    _train(tmp_path / "split", family, faces16, 6, resume=True)
    _train(tmp_path / "straight", family, faces16, 6, ckpt_every="3", **POSTHOC)
    for step in (3, 6):
        a, state_a = runs.load_checkpoint(tmp_path / "split" / "checkpoints" / f"step-{step:08d}")
        b, state_b = runs.load_checkpoint(tmp_path / "straight" / "checkpoints" / f"step-{step:08d}")
        assert a.keys() == b.keys()
        assert {"model.", "ema.", "posthoc.", "optim.", "rng."} <= {k.split(".")[0] + "." for k in a}
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"step {step}: {different[:5]}"
        for key in ("step", "nimg", "data", "optimizers"):
            assert state_a[key] == state_b[key]
    # A second epoch started (32 train images, batch 8): the data position carried over.
    assert state_a["data"] == {"epoch": 1, "offset": 16}
    split, straight = runs.Run(tmp_path / "split"), runs.Run(tmp_path / "straight")
    assert split.posthoc_steps() == [2, 3, 4, 6] and straight.posthoc_steps() == [2, 4, 6]
    for step in straight.posthoc_steps():
        a, b = split.read_posthoc(step)[0], straight.read_posthoc(step)[0]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"post-hoc snapshot {step}"
    # The resumed log holds each step once.
    steps = [json.loads(line)["step"] for line in open(tmp_path / "split" / "metrics.jsonl")
             if json.loads(line)["event"] == "train"]
    assert steps == [2, 4, 6]


def test_run_folder_and_checkpoint_pruning(tmp_path, faces16):
    summary = _train(tmp_path / "run", "vae", faces16, 7, keep=2)
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "vae" and config["model_config"]["resolution"] == 16
    assert config["train"]["batch"] == 8 and config["seed"] == 3
    assert config["preset"] == "tiny" and config["overrides"]["keep"] == 2  # how it was asked for, as given
    # Checkpoints at 2, 4, 6 and the final 7; the newest two are kept; last points at 7.
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000006", "step-00000007"]
    assert runs.resolve_checkpoint(run).name == "step-00000007"
    assert summary["step"] == 7 and math.isclose(summary["kimg"], 0.056)
    assert sorted(p.name for p in (run / "samples").glob("*.png"))[-1] == "step-00000007.png"
    assert any((run / "tb").iterdir())
    assert not (run / "posthoc").exists()  # post-hoc EMA is off by default
    assert not any(k.startswith("posthoc.") for k in runs.load_checkpoint(run)[0])
    events = [json.loads(line)["event"] for line in open(run / "metrics.jsonl")]
    assert events == ["train", "train", "train", "end"]


def test_best_fid_checkpoint_is_kept(tmp_path):
    run = tmp_path / "run"
    fids = {1: 30.0, 2: 10.0, 3: 20.0, 4: 25.0}
    for step, fid in fids.items():
        runs.Run(run).save_checkpoint(step, {"model.w": torch.full((2,), float(step))}, {"snapshot": {"fid": fid}}, keep=1)
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]
    assert runs.resolve_checkpoint(run / "checkpoints" / "best").name == "step-00000002"
    assert runs.resolve_checkpoint(run).name == "step-00000004"


def test_optimizer_state_round_trip():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.99))
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(4, 3)).square().sum().backward()
        opt.step()
    tensors, layout = checkpoint.optimizer_tensors("optim.g", opt)
    layout = json.loads(json.dumps(layout))  # what state.json holds
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=5.0)
    checkpoint.load_optimizer("optim.g", fresh, tensors, layout)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for index in a["state"]:
        for key, value in a["state"][index].items():
            assert torch.equal(value, b["state"][index][key])


def test_generator_loads_without_pickle_and_samples_by_seed(tmp_path, faces16):
    _train(tmp_path / "run", "dcgan", faces16, 2)
    model, state = load_generator(tmp_path / "run")
    assert state["step"] == 2 and not model.training
    together = sample_grid(model, [5, 6, 7], batch_size=3)
    apart = np.concatenate([sample_grid(model, [s], batch_size=1) for s in (5, 6, 7)])
    assert together.shape == (3, 16, 16, 3) and together.dtype == np.uint8
    np.testing.assert_array_equal(together, apart)
    assert not np.array_equal(together[0], together[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_command_is_deterministic(tmp_path, faces16, family):
    _train(tmp_path / "run", family, faces16, 1)
    runner = CliRunner()
    outs = []
    for name, batch in (("a", "4"), ("b", "3")):
        result = runner.invoke(main, ["sample", str(tmp_path / "run"), "--count", "4", "--seed", "10", "--out",
                                      str(tmp_path / name), "--batch-size", batch, "--device", "cpu",
                                      "--grid", str(tmp_path / f"{name}.png")])
        assert result.exit_code == 0, result.output
        outs.append([np.asarray(__import__("PIL.Image").Image.open(p)) for p in sorted((tmp_path / name).iterdir())])
    assert [p.name for p in sorted((tmp_path / "a").iterdir())][0] == "seed000010.png"
    assert len(outs[0]) == 4 and (tmp_path / "a.png").is_file()
    for x, y in zip(*outs):
        np.testing.assert_array_equal(x, y)


def test_nan_stops_cleanly_and_keeps_last_good_checkpoint(tmp_path, faces16):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "vae", "--data", str(faces16), "--out", str(run), "--steps", "50",
                                       "--device", "cpu", "--set", "lr=10", "--set", "batch=8",
                                       "--set", "ckpt_every=1", "--set", "sample_every=0"])
    assert result.exit_code == 2
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("error: ") and ("nan" in message or "inf" in message)
    assert "training stopped without saving" in message and "last good checkpoint" in message
    tensors, state = runs.load_checkpoint(run)
    assert f"step {state['step']})" in message
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())
    load_generator(run)


def test_settings_are_checked(tmp_path, faces16):
    spec = registry.get("vae")
    with pytest.raises(UserError, match="unknown setting 'lrr'"):
        make_config(spec, "d", 16, "tiny", {"lrr": 1}, 0)
    with pytest.raises(UserError, match="should be an integer"):
        make_config(spec, "d", 16, "tiny", {"batch": "big"}, 0)
    with pytest.raises(UserError, match="comes from the dataset"):
        make_config(spec, "d", 16, "tiny", {"resolution": 32}, 0)
    assert parse_sets(["lr=1e-3", "sampler=ddim", "channel_mults=[1,2]"]) == {
        "lr": 1e-3, "sampler": "ddim", "channel_mults": [1, 2]}
    with pytest.raises(UserError, match="already holds a run"):
        _train(tmp_path / "run", "vae", faces16, 1)
        _train(tmp_path / "run", "vae", faces16, 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_settings_share_one_namespace(family):
    """`--set key=value` must be unambiguous, and presets may only name real settings."""
    spec = registry.get(family)
    groups = [field_names(spec.model.config_class), field_names(spec.objective.config_class), field_names(TrainConfig)]
    names = [n for g in groups for n in g]
    assert len(names) == len(set(names)), f"{family}: a setting name is used twice"
    for preset, values in spec.presets.items():
        assert set(values) <= set(names), f"{family} {preset}: {set(values) - set(names)}"
        make_config(spec, "d", 32 if preset == "tiny" else 64, preset, {}, 0)


def test_fid_snapshots_are_kept_with_their_checkpoints(tmp_path, faces16, monkeypatch, cheap_inception):
    """Snapshots (the metric faked here: FID needs minutes of Inception on a CPU) see EMA
    samples of fixed seeds, land in metrics.jsonl and the checkpoint of their step, the best
    is kept, and sampling leaves the training randomness alone (still exact resume)."""
    import animegen.training.snapshots

    fids = iter([30.0, 10.0, 20.0, 40.0, 50.0, 60.0])
    seen = []

    def fake_evaluate(batches, real, split, metrics, num, num_real, **kw):
        images = torch.cat(list(batches))
        seen.append((images.shape, split, metrics, str(real)))
        return {"fid": next(fids), "kid": 1.0, "precision": 0.5, "recall": 0.25, "real": "label", "num_real": num_real}

    monkeypatch.setattr(animegen.training.snapshots, "evaluate_generator", fake_evaluate)
    _train(tmp_path / "run", "vae", faces16, 7, fid_every="2", fid_num=5, keep=1, ckpt_every="100")
    run = tmp_path / "run"
    assert seen[0] == (torch.Size([5, 3, 16, 16]), "test", ("fid", "kid", "pr"), str(faces16.resolve()))
    snapshots = [json.loads(line) for line in open(run / "metrics.jsonl") if '"fid"' in line]
    assert [(s["step"], s["fid"]) for s in snapshots] == [(2, 30.0), (4, 10.0), (6, 20.0), (7, 40.0)]
    assert snapshots[0]["recall"] == 0.25 and snapshots[0]["num"] == 5 and "real" not in snapshots[0]
    kept = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert kept == ["step-00000004", "step-00000007"]  # the best FID and the newest
    assert runs.load_checkpoint(run / "checkpoints" / "best")[1]["snapshot"]["fid"] == 10.0

    _train(tmp_path / "plain", "vae", faces16, 7, keep=1)
    a, b = runs.load_checkpoint(run)[0], runs.load_checkpoint(tmp_path / "plain")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_ends_the_run_with_a_checkpoint(tmp_path, faces16, monkeypatch):
    """A SIGTERM (or Ctrl-C) lets the current step finish, then the run ends as usual:
    checkpoint, grid, summary; resuming continues from there."""
    import signal

    from animegen.training.objectives.vae import VAEObjective

    real_step = VAEObjective.train_step

    def step_then_signal(self, real, step):
        losses = real_step(self, real, step)
        if step == 2:
            signal.raise_signal(signal.SIGTERM)
        return losses

    monkeypatch.setattr(VAEObjective, "train_step", step_then_signal)
    summary = _train(tmp_path / "run", "vae", faces16, 50)
    assert summary["stopped_early"] and summary["step"] == 3
    assert runs.resolve_checkpoint(tmp_path / "run").name == "step-00000003"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    monkeypatch.setattr(VAEObjective, "train_step", real_step)
    assert _train(tmp_path / "run", "vae", faces16, 5, resume=True)["step"] == 5


def test_peak_memory_of_training_leaves_out_grids_and_snapshots():
    from animegen.training.memory import PeakMemory

    memory = PeakMemory(torch.device("cpu"))
    before = memory.training_mb()
    with memory.apart():  # what a FID snapshot's Inception passes would allocate
        big = torch.ones(50_000_000)  # 200 MB
        del big
    assert memory.apart_mb > before + 150
    assert memory.training_mb() < before + 50


def test_peak_memory_leaves_out_what_the_kept_heap_holds():
    """The CLI keeps freed heap blocks for reuse (animegen.heap); blocks a snapshot freed are
    handed back before training's peak is measured again, so they do not count towards it."""
    from animegen import heap
    from animegen.training.memory import PeakMemory

    if not heap.keep_freed_memory():
        pytest.skip("no glibc mallopt here")
    memory = PeakMemory(torch.device("cpu"))
    before = memory.training_mb()
    with memory.apart():
        blocks = [torch.ones(5_000_000) for _ in range(20)]  # 20 x 20 MB, under the mmap threshold
        del blocks
    assert memory.apart_mb > before + 300
    assert memory.training_mb() < before + 50
