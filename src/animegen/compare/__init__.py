"""`animegen compare`: several families trained for one budget and measured under one
protocol, with the two papers' tables beside ours.

The report folder OUT holds runs/<family> (ordinary run folders: running the comparison
again continues them where a kill stopped them), grids/<family>.png (seeds 0-63, the same
z wherever the latent shapes match), fid_curves.png, ddpm_nfe.png (with a DDPM),
results.json (every number), report.md and index.html (the same report in one file).
"""

from __future__ import annotations

import signal as signal_module
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

from animegen import runs
from animegen.devices import resolve_device
from animegen.errors import UserError
from animegen.generate import evaluate_run, load_generator, sample_batches, write_samples
from animegen.io import atomic_write_bytes, atomic_write_json
from animegen.compare import plots
from animegen.compare.report import PAPER_1, PAPER_2, html_page, markdown, sections
from animegen.metrics.equivariance import EQ_METRICS
from animegen.models import registry
from animegen.settings import check_int, check_new_folder
from animegen.training.config import RunConfig
from animegen.training.loop import Target, train
from animegen.training.memory import PeakMemory
from animegen.training.plan import parameter_counts

FEATURE_METRICS = ("fid", "kid", "pr")
SCORES = ("fid", "kid", "precision", "recall")
# EQ needs an input transform (StyleGAN3's raw_sample); StyleGAN2 has none, so it gets no EQ column.
EQ_FAMILIES = ("stylegan3-t", "stylegan3-r")
GRID_SEEDS = 64
NFE_STEPS = (10, 20, 50, 100)  # DDIM / DPM-Solver++ step counts of the DDPM sweep (plus all steps)
DETERMINISTIC_SAMPLERS = ("ddim", "dpm-solver++")  # one network evaluation per step, as ancestral DDPM
MAX_REPEATS = 100

def run_comparison(data: str | None, out: str, models: Sequence[str] = tuple(registry.names()),
                   preset: str = "tiny", target: Target | None = None, fid_num: int = 1000, repeats: int | None = None,
                   device: str = "auto", runs_given: Sequence[str] | None = None, sets: dict | None = None,
                   fid_every: str | None = None, nfe_steps: Sequence[int] = NFE_STEPS, nfe_num: int | None = None,
                   curve_num: int | None = None, echo=print) -> dict:
    """Train each of `models` on `data` into OUT/runs/<family> up to `target` (or take the
    existing runs `runs_given`), evaluate each, and write OUT/results.json, OUT/report.md
    and OUT/grids/. Returns the results; with "signal" set when a signal stopped training
    (the comparison continues from there when run again). `repeats` defaults to 3 on a GPU,
    1 on the CPU. A DDPM is also measured at each of `nfe_steps` (empty: not), with FID-`nfe_num`
    (default `fid_num`). Training records FID-`curve_num` snapshots (default a fifth of
    `fid_num`, at least 4) every `fid_every` (default a fifth of the budget) for the training curves.
    A `sets` key FAMILY.KEY applies to that family only."""
    out = Path(out)
    check_int("--fid-num", fid_num, 4, 10**6)  # precision/recall's k=3 neighbours need 4 images
    if repeats is None:
        repeats = 3 if resolve_device(device).type == "cuda" else 1
    check_int("--repeats", repeats, 1, MAX_REPEATS)
    nfe_num = fid_num if nfe_num is None else nfe_num
    check_int("--nfe-num", nfe_num, 2, 10**6)
    curve_num = max(4, fid_num // 5) if curve_num is None else curve_num
    check_int("--curve-num", curve_num, 4, 10**6)
    for steps in nfe_steps:
        check_int("--nfe-steps", steps, 1, 100_000)
    _check_report_folder(out)
    folders = _existing_runs(runs_given) if runs_given else _planned_runs(out, data, models, target)
    family_sets(sets or {}, None)  # an unknown family in FAMILY.KEY fails before any training
    progress = _Progress({"train": 0 if runs_given else len(folders), "evaluate": len(folders), "write": 1}, echo,
                         {"train": target.value * 60} if target is not None and target.unit == "minutes" else None)
    if not runs_given:
        for k, (family, folder) in enumerate(folders.items(), 1):
            if _reached(folder, target):  # running the comparison again adds nothing to it
                progress.line("train", f"{folder} already reached {target.describe()}: not training it again",
                              timed=False)
                continue
            progress.line("train", f"training {family} ({k} of {len(folders)}) to {target.describe()}")
            snapshots = {"fid_every": fid_every or _fifth_of(target), "fid_num": curve_num}
            signal = _train_family(family, folder, data, preset, target, family_sets(sets or {}, family), device,
                                   snapshots, echo)
            if signal:
                echo(f"stopped by {signal_module.Signals(signal).name}: run the same command again to continue the comparison.")
                return {"signal": signal}
    models_out = {}
    for k, (family, folder) in enumerate(folders.items(), 1):
        progress.line("evaluate", f"evaluating {family} ({k} of {len(folders)}): FID-{fid_num} x {repeats}")
        models_out[family] = _evaluate(family, folder, fid_num, repeats, device)
        if family == "ddpm" and nfe_steps:
            progress.echo(f"  ddpm: FID-{nfe_num} against NFE")
            models_out[family]["nfe_sweep"] = nfe_sweep(folder, nfe_num, device, nfe_steps)
    progress.line("write", "writing grids, plots and the report")
    (out / "grids").mkdir(parents=True, exist_ok=True)
    for family, folder in folders.items():
        models_out[family]["grid"] = _write_grid(folder, out, f"grids/{family}.png", device)
    plots.fid_curves({family: m["curve"] for family, m in models_out.items()}, out / "fid_curves.png")
    if "nfe_sweep" in models_out.get("ddpm", {}):
        plots.nfe_plot(models_out["ddpm"]["nfe_sweep"], out / "ddpm_nfe.png")
    results = {"protocol": _protocol(models_out, fid_num, repeats, device, target), "models": models_out,
               "papers": {"paper1_table1": PAPER_1, "paper2_table1": {k: dict(zip(("fid", "eqt", "eqr"), v))
                                                                      for k, v in PAPER_2.items()}}}
    atomic_write_json(out / "results.json", results)
    parts = sections(results)
    atomic_write_bytes(out / "report.md", markdown(parts).encode())
    atomic_write_bytes(out / "index.html", html_page(parts, out).encode())
    progress.line(None, f"done: {out / 'index.html'} and {out / 'report.md'}")
    return {**results, "signal": None}


# ---------------------------------------------------------------- runs
def _check_report_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the report.")
    if not out.exists():
        check_new_folder("--out", out)


def _planned_runs(out: Path, data: str | None, models: Sequence[str], target: Target | None) -> dict[str, Path]:
    if data is None or target is None:
        raise UserError("a comparison that trains needs --data and one of --minutes and --kimg (or give --runs).")
    models = list(dict.fromkeys(models))
    for name in models:
        registry.get(name)  # an unknown family fails before any training
    if not models:
        raise UserError(f"--models is empty; choose from {', '.join(registry.names())}.")
    return {name: out / "runs" / name for name in models}


def _fifth_of(target: Target) -> str:
    """An FID snapshot interval giving five points over the budget."""
    if target.unit == "steps":
        return str(max(1, int(target.value) // 5))
    return f"{target.value / 5:g}{'kimg' if target.unit == 'kimg' else 'min'}"


def family_sets(sets: dict, family: str | None) -> dict:
    """The settings for `family`: plain keys apply to every family, FAMILY.KEY to that one."""
    out = {}
    for key, value in sets.items():
        owner, dot, name = key.rpartition(".")
        if dot and owner not in registry.names():
            raise UserError(f"--set {key}: {owner!r} is not a family; choose from {', '.join(registry.names())}.")
        if not dot or owner == family:
            out[name] = value
    return out


def _existing_runs(paths: Sequence[str]) -> dict[str, Path]:
    """The runs by family; one run per family, each with a checkpoint."""
    folders = {}
    for path in paths:
        family = runs.Run(path).read_config()["model"]
        if family in folders:
            raise UserError(f"--runs has two {family} runs ({folders[family]}, {path}); compare one run per family.")
        if not runs.Run(path).steps():
            raise UserError(f"{path} has no checkpoint yet; train it first.")
        folders[family] = Path(path)
    return folders


def _reached(folder: Path, target: Target) -> bool:
    if not runs.Run(folder).steps():
        return False
    info = runs.describe_run(folder)
    return target.reached({"steps": info["step"], "kimg": info["kimg"], "minutes": info["training_minutes"]})


def _train_family(family: str, folder: Path, data: str, preset: str, target: Target, sets: dict | None,
                  device: str, snapshots: dict, echo) -> int | None:
    """Train (or continue) one run up to `target`; returns the signal that stopped it."""
    PeakMemory(resolve_device(device)).reset()  # forget the previous family's peak (one process)
    result = train(str(folder), model=family, data=data, preset=preset, sets=sets, target=target, resume=True,
                   device=device, echo=echo, **snapshots)
    return result["signal"]


# ---------------------------------------------------------------- measurements
def _evaluate(family: str, folder: Path, fid_num: int, repeats: int, device: str) -> dict:
    """FID, KID and P/R over `repeats` disjoint seed ranges (repeat r: seeds r*N..r*N+N-1);
    EQ once (its own latents and transforms do not depend on the range)."""
    repeats_out = []
    for r in range(repeats):
        metrics = [*FEATURE_METRICS, *(EQ_METRICS if family in EQ_FAMILIES and r == 0 else ())]
        repeats_out.append(evaluate_run(str(folder), metrics, fid_num, seed=r * fid_num, device=device, record=False))
    first = repeats_out[0]
    scores = {key: _mean_sd([result[key] for result in repeats_out]) for key in SCORES}
    scores.update({key: first[key] for key in ("kid_std", *EQ_METRICS) if key in first})
    events = runs.Run(folder).read_metrics()
    return {"run": str(folder), "scores": scores, "repeats": repeats_out, "training": training_facts(events, folder),
            "curve": fid_curve(events), "parameters": _parameters(folder), **_sampling_speed(folder, device)}


def parse_nfe_steps(text: str) -> tuple[int, ...]:
    """--nfe-steps: comma-separated step counts, or "none"."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--nfe-steps {text!r} is not a comma-separated list of step counts (such as 10,20,50) "
                        "or 'none'.") from None


def nfe_sweep(folder: Path, fid_num: int, device: str, steps: Sequence[int] = NFE_STEPS) -> list[dict]:
    """A DDPM's FID-N (seeds 0..N-1) against the number of network evaluations: ancestral
    DDPM at all its timesteps; DDIM (eta 0) and DPM-Solver++ at each of `steps` below that
    and at all of them."""
    timesteps = runs.Run(folder).read_config()["model_config"]["timesteps"]
    counts = sorted({n for n in steps if n < timesteps} | {timesteps})
    points = [("ddpm", timesteps), *((sampler, n) for sampler in DETERMINISTIC_SAMPLERS for n in counts)]
    return [{"sampler": sampler, "nfe": n, "num": fid_num,
             "fid": evaluate_run(str(folder), ["fid"], fid_num, options={"sampler": sampler, "steps": n},
                                 device=device, record=False)["fid"]} for sampler, n in points]


def _mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}


def fid_curve(events: list[dict]) -> list[dict]:
    """The run's FID snapshots: kimg, training minutes, FID and its image count."""
    return [{"kimg": e["kimg"], "minutes": e["train_seconds"] / 60, "fid": e["fid"], "num": e["num"]}
            for e in events if e.get("event") == "fid"]


def training_facts(events: list[dict], folder: Path) -> dict:
    """Steps, kimg, training minutes, img/s over the whole run and peak training memory
    (on CPU the process's peak resident size), from the run's events; a run without any
    (an import) gives what its newest checkpoint says."""
    clocked = [e for e in events if "train_seconds" in e]
    if clocked:
        last = clocked[-1]
        step, kimg, seconds = last["step"], last["kimg"], last["train_seconds"]
    else:
        info = runs.describe_run(folder)
        step, kimg, seconds = info["step"], info["kimg"], info["training_minutes"] * 60
    peaks = [e["peak_mem_mb"] for e in events if "peak_mem_mb" in e]
    return {"step": step, "kimg": kimg, "minutes": seconds / 60, "img_per_s": kimg * 1000 / seconds if seconds else None,
            "peak_mem_mb": max(peaks) if peaks else None}


def _parameters(folder: Path) -> dict[str, int]:
    stored = runs.Run(folder).read_config()
    return parameter_counts(RunConfig.from_json(stored, registry.get(stored["model"])))


def _sampling_speed(folder: Path, device: str) -> dict:
    """Images per second of the EMA generator over the grid's seeds (one warm-up image
    first), and its latent shape."""
    model, _ = load_generator(folder, device)
    options = model.resolve_sample_options({})
    for batch in sample_batches(model, range(1), 1, options):
        batch.cpu()
    start = time.perf_counter()
    for batch in sample_batches(model, range(GRID_SEEDS), GRID_SEEDS, options):
        batch.cpu()  # waits for the device
    speed = {"img_per_s": GRID_SEEDS / (time.perf_counter() - start), "images": GRID_SEEDS}
    return {"sampling": {**speed, "nfe": options["steps"]} if "steps" in options else speed,
            "z_shape": list(model.z_shape)}


def _write_grid(folder: Path, out: Path, grid: str, device: str) -> str:
    """Seeds 0-63 as OUT/`grid`; returns `grid` (relative, as the report links it)."""
    with tempfile.TemporaryDirectory(dir=out / "grids") as tmp:
        write_samples(str(folder), str(Path(tmp) / "seeds"), GRID_SEEDS, grid=str(out / grid), device=device)
    return grid


def _protocol(models: dict, fid_num: int, repeats: int, device: str, target: Target | None) -> dict:
    first = next(iter(models.values()))["repeats"][0]
    return {"generated": fid_num, "repeats": repeats,
            "seed_ranges": [[r * fid_num, (r + 1) * fid_num - 1] for r in range(repeats)],
            "real": first["protocol"]["real"], "split": first["split"], "num_real": first["num_real"],
            "inception_sha256": first["inception_sha256"], "resize": first["resize"], "weights": "ema",
            "truncation_psi": 1.0,
            "sample_options": {family: m["repeats"][0]["protocol"]["sample_options"] for family, m in models.items()},
            "eq_images": first.get("eq_images", fid_num), "device": str(resolve_device(device)),
            "budget": target.describe() if target else "as given (--runs)", "commit": _commit()}


def _commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


class _Progress:
    """One line per phase with an ETA for the whole comparison: for each kind of phase
    (training, evaluating, writing) its mean time so far, or the mean of all phases while
    none of that kind has finished, times the phases of that kind left. `guess`: seconds
    per phase of a kind before one has finished (a --minutes budget's training)."""

    def __init__(self, phases: dict[str, int], echo, guess: dict[str, float] | None = None):
        self.left, self.took, self.echo = dict(phases), {kind: [] for kind in phases}, echo
        self.guess = guess or {}
        self.total, self.done = sum(phases.values()), 0
        self.start = self.mark = time.perf_counter()
        self.kind, self.timed = None, True

    def line(self, kind: str | None, text: str, timed: bool = True) -> None:
        """Start a phase of `kind` (None: the end); `timed=False`: one that does no work (a
        run already trained), left out of the means."""
        now = time.perf_counter()
        if self.kind:
            self.done += 1
            if self.timed:
                self.took[self.kind].append(now - self.mark)
        self.kind, self.mark, self.timed = kind, now, timed
        if kind:
            self.left[kind] -= 1
        everything = [t for times in self.took.values() for t in times]
        eta = ""
        if (everything or self.guess) and (sum(self.left.values()) or kind):
            mean = {k: statistics.fmean(times) if times else self.guess.get(k, statistics.fmean(everything or [0]))
                    for k, times in self.took.items()}
            seconds = sum(mean[k] * n for k, n in self.left.items()) + (mean[kind] if kind and timed else 0)
            eta = f"ETA {_minutes(max(seconds, 0))}"
        self.echo(f"[compare {self.done}/{self.total}, {_minutes(now - self.start)}] {text}  {eta}".rstrip())


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"
