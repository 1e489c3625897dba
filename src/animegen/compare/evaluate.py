"""Measuring a comparison's runs under one protocol: FID, KID and precision/recall over
disjoint seed ranges, EQ where a family has an input transform, FID against NFE where it has
a sampler to sweep (each as the family declares: `Model.capabilities`, `Model.nfe_sweep`),
FID against post-hoc EMA length where asked; and, from each run, its training facts and FID
curve, parameter counts, sampling speed and a grid of seeds 0-63; finally the protocol as
results.json records it."""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

from animegen import runs
from animegen.compare.plan import Protocol
from animegen.compare.progress import Progress
from animegen.devices import resolve_device
from animegen.generate import evaluate_run, load_generator, sample_batches, write_samples
from animegen.metrics.equivariance import EQ_METRICS
from animegen.models import registry
from animegen.training.config import RunConfig
from animegen.training.loop import Target
from animegen.training.plan import parameter_counts

FEATURE_METRICS = ("fid", "kid", "pr")
SCORES = ("fid", "kid", "precision", "recall")
GRID_SEEDS = 64
NFE_STEPS = (10, 20, 50, 100)  # step counts an NFE sweep measures (each family adds its own, e.g. all steps)


def evaluate_families(folders: dict[str, Path], protocol: Protocol, device: str, progress: Progress) -> dict[str, dict]:
    """Each run's measurements, by family."""
    models = {}
    for k, (family, folder) in enumerate(folders.items(), 1):
        progress.line("evaluate", f"evaluating {family} ({k} of {len(folders)}): "
                                  f"FID-{protocol.fid_num} x {protocol.repeats}")
        models[family] = evaluate(family, folder, protocol, device, progress.echo)
    return models


def evaluate(family: str, folder: Path, protocol: Protocol, device: str, echo) -> dict:
    """FID, KID and P/R over `repeats` disjoint seed ranges (repeat r: seeds r*N..r*N+N-1);
    EQ once where the family has an input transform (its own latents and transforms do not
    depend on the range); FID against NFE where it has a sampler to sweep."""
    fid_num, repeats_out = protocol.fid_num, []
    eq = EQ_METRICS if registry.model_class(family).capabilities.input_transform else ()
    for r in range(protocol.repeats):
        metrics = [*FEATURE_METRICS, *(eq if r == 0 else ())]
        repeats_out.append(evaluate_run(str(folder), metrics, fid_num, seed=r * fid_num, device=device, record=False,
                                        echo=echo))
    first = repeats_out[0]
    scores = {key: _mean_sd([result[key] for result in repeats_out]) for key in SCORES}
    scores.update({key: first[key] for key in ("kid_std", *EQ_METRICS) if key in first})
    events = runs.Run(folder).read_metrics()
    measured = {"run": str(folder), "scores": scores, "repeats": repeats_out,
                "training": training_facts(events, folder), "curve": fid_curve(events),
                "parameters": _parameters(folder), **_sampling_speed(folder, device)}
    if family in protocol.guides:
        echo(f"  {family}: FID-{fid_num} with autoguidance by {protocol.guides[family]}")
        measured["guided"] = guided_fid(folder, protocol, family, device)
    sweep = nfe_sweep(folder, protocol.nfe_num, device, protocol.nfe_steps) if protocol.nfe_steps else []
    if sweep:
        echo(f"  {family}: FID-{protocol.nfe_num} against NFE")
        measured["nfe_sweep"] = sweep
    if protocol.ema_lengths:
        echo(f"  {family}: FID-{fid_num} against EMA length")
        measured["ema_sweep"] = ema_sweep(folder, fid_num, device, protocol.ema_lengths)
    return measured


def nfe_sweep(folder: Path, fid_num: int, device: str, steps: Sequence[int] = NFE_STEPS) -> list[dict]:
    """FID-N (seeds 0..N-1) against the number of network evaluations, at the sampler settings
    the family sweeps for these step counts (`Model.nfe_sweep`; none for a one-pass generator)."""
    model, _ = load_generator(folder, device)
    points = []
    for options in model.nfe_sweep(steps):
        resolved = model.resolve_sample_options(options)
        fid = evaluate_run(str(folder), ["fid"], fid_num, options=options, device=device, record=False)["fid"]
        points.append({"sampler": resolved.get("sampler"), "nfe": model.nfe(resolved), "options": resolved,
                       "num": fid_num, "fid": fid})
    return points


def ema_sweep(folder: Path, fid_num: int, device: str, lengths: Sequence[float]) -> list[dict]:
    """FID-N (seeds 0..N-1) of the post-hoc EMA of each length, made from the run's snapshots."""
    points = []
    for length in lengths:
        result = evaluate_run(str(folder), ["fid"], fid_num, device=device, record=False, ema_length=length)
        points.append({"ema_length": length, "num": fid_num, "fid": result["fid"],
                       "profile_fit_error": result["protocol"]["posthoc"]["profile_fit_error"]})
    return points


def guided_fid(folder: Path, protocol: Protocol, family: str, device: str) -> dict:
    """FID over the first repeat's seeds with the family's guide (the run's own sampler otherwise)."""
    options = {} if protocol.guidance is None else {"guidance": protocol.guidance}
    result = evaluate_run(str(folder), ["fid"], protocol.fid_num, options=options, device=device, record=False,
                          guide=protocol.guides[family])
    used = result["protocol"]
    return {"guide": used["guide"], "guidance": used["sample_options"]["guidance"], "fid": result["fid"],
            "num": protocol.fid_num}


def _mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}


# ---------------------------------------------------------------- what the run records
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


# ---------------------------------------------------------------- what the generator does
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
    nfe = model.nfe(options)
    return {"sampling": {**speed, "nfe": nfe} if nfe is not None else speed,
            "z_shape": list(model.z_shape)}


def add_grids(models: dict[str, dict], folders: dict[str, Path], out: Path, device: str) -> None:
    """Seeds 0-63 of each run as OUT/grids/<family>.png, linked from its measurements as "grid"."""
    (out / "grids").mkdir(parents=True, exist_ok=True)
    for family, folder in folders.items():
        models[family]["grid"] = _write_grid(folder, out, f"grids/{family}.png", device)


def _write_grid(folder: Path, out: Path, grid: str, device: str) -> str:
    """Seeds 0-63 as OUT/`grid`; returns `grid` (relative, as the report links it)."""
    with tempfile.TemporaryDirectory(dir=out / "grids") as tmp:
        write_samples(str(folder), str(Path(tmp) / "seeds"), GRID_SEEDS, grid=str(out / grid), device=device)
    return grid


# ---------------------------------------------------------------- the protocol
def describe_protocol(protocol: Protocol, models: dict, device: str, target: Target | None) -> dict:
    """The protocol as results.json records it: counts and seeds, the reference set and
    Inception weights the metrics used, each family's sample options, the budget, the commit."""
    fid_num, repeats = protocol.fid_num, protocol.repeats
    first = next(iter(models.values()))["repeats"][0]
    return {"generated": fid_num, "repeats": repeats,
            "seed_ranges": [[r * fid_num, (r + 1) * fid_num - 1] for r in range(repeats)],
            "real": first["protocol"]["real"], "split": first["split"], "num_real": first["num_real"],
            "inception_sha256": first["inception_sha256"], "resize": first["resize"], "weights": "ema",
            "truncation_psi": 1.0,
            "sample_options": {family: m["repeats"][0]["protocol"]["sample_options"] for family, m in models.items()},
            "eq_images": first.get("eq_images", fid_num), "ema_lengths": list(protocol.ema_lengths),
            "device": str(resolve_device(device)),
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
