"""What a comparison will do, checked before any training: the numbers of the evaluation
protocol, the report folder, the runs (planned under OUT/runs, or existing ones given),
each family's settings, which runs already reached the budget, and how often training
takes the FID snapshots of the curves."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from animegen import posthoc, runs
from animegen.data.store import load_split
from animegen.devices import resolve_device
from animegen.errors import UserError
from animegen.models import registry
from animegen.settings import check_int, check_new_folder
from animegen.training.loop import Target

MAX_REPEATS = 100


@dataclass(frozen=True)
class Protocol:
    """How every family is measured: FID-`fid_num` (with KID and P/R) over `repeats` disjoint
    seed ranges; a DDPM also at each of `nfe_steps` with FID-`nfe_num`; the training curves'
    snapshots with FID-`curve_num`; every run also at each post-hoc EMA length of
    `ema_lengths` with FID-`fid_num` (seeds 0..fid_num-1)."""

    fid_num: int
    repeats: int
    nfe_steps: tuple[int, ...]
    nfe_num: int
    curve_num: int
    ema_lengths: tuple[float, ...] = ()
    guides: dict[str, str] = field(default_factory=dict)  # family -> guide run: FID also with autoguidance
    guidance: float | None = None  # its weight (None: the family's default)


def check_protocol(fid_num: int, repeats: int | None, device: str, nfe_steps: Sequence[int], nfe_num: int | None,
                   curve_num: int | None, ema_lengths: Sequence[float] = (), guides: Sequence[str] = (),
                   guidance: float | None = None) -> Protocol:
    """The protocol's numbers, checked, with the defaults filled in: `repeats` 3 on a GPU and
    1 on the CPU, `nfe_num` `fid_num`, `curve_num` a fifth of `fid_num` (at least 4). `guides`:
    "FAMILY=RUN" (parse_guides)."""
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
    lengths = tuple(posthoc.check_length(length, "--ema-lengths") for length in ema_lengths)
    if guidance is not None and not guides:
        raise UserError("--guidance weighs a guide model: give --guide FAMILY=RUN too.")
    return Protocol(fid_num, repeats, tuple(nfe_steps), nfe_num, curve_num, lengths, parse_guides(guides), guidance)


def parse_guides(guides: Sequence[str]) -> dict[str, str]:
    """--guide FAMILY=RUN_OR_CHECKPOINT (repeatable): each guide a checkpoint of that family's."""
    out = {}
    for text in guides:
        family, sep, path = text.partition("=")
        if not sep or not path:
            raise UserError(f"--guide {text!r} is not FAMILY=RUN_OR_CHECKPOINT.")
        registry.model_class(family)  # an unknown family is one line
        guide_family = runs.load_checkpoint(path)[1]["model"]
        if guide_family != family:
            raise UserError(f"--guide {text}: {path} is a run of {guide_family}: a guide must be a run of the same "
                            "family.")
        out[family] = path
    return out


def check_guides(protocol: Protocol, folders: dict[str, Path]) -> None:
    missing = sorted(set(protocol.guides) - set(folders))
    if missing:
        raise UserError(f"--guide names {', '.join(missing)}, which this comparison does not measure.")


def parse_nfe_steps(text: str) -> tuple[int, ...]:
    """--nfe-steps: comma-separated step counts, or "none"."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--nfe-steps {text!r} is not a comma-separated list of step counts (such as 10,20,50) "
                        "or 'none'.") from None


def check_report_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the report.")
    if not out.exists():
        check_new_folder("--out", out)


def planned_runs(out: Path, data: str | None, models: Sequence[str] | None, target: Target | None) -> dict[str, Path]:
    """OUT/runs/<family> for each of `models` (None: every registered family)."""
    if data is None or target is None:
        raise UserError("a comparison that trains needs --data and one of --minutes and --kimg (or give --runs).")
    models = list(dict.fromkeys(registry.names() if models is None else models))
    for name in models:
        registry.get(name)  # an unknown family fails before any training
    if not models:
        raise UserError(f"--models is empty; choose from {', '.join(registry.names())}.")
    return {name: out / "runs" / name for name in models}


def existing_runs(paths: Sequence[str]) -> dict[str, Path]:
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


def posthoc_sets(sets: dict, protocol: Protocol) -> dict:
    """With EMA lengths to measure, the runs track EDM2's two post-hoc profiles unless the
    settings choose others."""
    return {"posthoc_ema": list(posthoc.DEFAULT_PROFILES), **sets} if protocol.ema_lengths else sets


def check_ema_lengths(folders: dict[str, Path], protocol: Protocol) -> None:
    """Every run can make every EMA length of the protocol, if it has any (before any is measured)."""
    for folder in folders.values() if protocol.ema_lengths else ():
        posthoc.check_lengths(folder, protocol.ema_lengths, "--ema-lengths")


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


def reached(folder: Path, target: Target) -> bool:
    """Whether the run in `folder` already trained up to `target`."""
    if not runs.Run(folder).steps():
        return False
    info = runs.describe_run(folder)
    return target.reached({"steps": info["step"], "kimg": info["kimg"], "minutes": info["training_minutes"]})


def snapshot_settings(fid_every: str | None, curve_num: int, target: Target, data: str) -> dict:
    """Training's FID snapshots for the curves: every `fid_every`, by default a fifth of the
    budget, each family's against the whole test split (a CPU run would otherwise choose its
    own share of it, and the curves would not compare)."""
    return {"fid_every": fid_every or _fifth_of(target), "fid_num": curve_num,
            "fid_real": len(load_split(data, "test"))}


def _fifth_of(target: Target) -> str:
    """An FID snapshot interval giving five points over the budget."""
    if target.unit == "steps":
        return str(max(1, int(target.value) // 5))
    return f"{target.value / 5:g}{'kimg' if target.unit == 'kimg' else 'min'}"
