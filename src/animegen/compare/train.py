"""Training for a comparison: each family's run up to the budget, one after another in this
process; a run continues where a kill stopped it, and one that reached the budget is left."""

from __future__ import annotations

from pathlib import Path

from animegen.compare.plan import family_sets, reached
from animegen.compare.progress import Progress
from animegen.devices import resolve_device
from animegen.training.loop import Target, train
from animegen.training.memory import PeakMemory


def train_families(folders: dict[str, Path], data: str, preset: str, target: Target, sets: dict, device: str,
                   snapshots: dict, progress: Progress, echo) -> int | None:
    """Train (or continue) each run of `folders` up to `target`; returns the signal that
    stopped one, or None."""
    for k, (family, folder) in enumerate(folders.items(), 1):
        if reached(folder, target):  # running the comparison again adds nothing to it
            progress.line("train", f"{folder} already reached {target.describe()}: not training it again",
                          timed=False)
            continue
        progress.line("train", f"training {family} ({k} of {len(folders)}) to {target.describe()}")
        PeakMemory(resolve_device(device)).reset()  # forget the previous family's peak (one process)
        result = train(str(folder), model=family, data=data, preset=preset, sets=family_sets(sets, family),
                       target=target, resume=True, device=device, echo=echo, **snapshots)
        if result["signal"]:
            return result["signal"]
    return None
