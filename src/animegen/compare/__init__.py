"""`animegen compare`: several families trained for one budget and measured under one
protocol, with the two papers' tables beside ours.

The report folder OUT holds runs/<family> (ordinary run folders: running the comparison
again continues them where a kill stopped them), grids/<family>.png (seeds 0-63, the same
z wherever the latent shapes match), fid_curves.png, ddpm_nfe.png (with a DDPM),
ema_lengths.png (with --ema-lengths), results.json (every number), report.md and index.html
(the same report in one file).

plan -> train -> evaluate -> report: compare.plan checks everything before any training,
compare.train trains each family, compare.evaluate measures each run, compare.report
writes the figures, results.json and the report.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Sequence

from animegen.compare.evaluate import NFE_STEPS, add_grids, describe_protocol, evaluate_families
from animegen.compare.plan import (check_ema_lengths, check_guides, check_protocol, check_report_folder, existing_runs,
                                   family_sets, planned_runs, posthoc_sets, snapshot_settings)
from animegen.compare.progress import Progress
from animegen.compare.report import PAPERS, write_report
from animegen.compare.train import train_families
from animegen.training.loop import Target


def run_comparison(data: str | None, out: str, models: Sequence[str] | None = None,
                   preset: str = "tiny", target: Target | None = None, fid_num: int = 1000, repeats: int | None = None,
                   device: str = "auto", runs_given: Sequence[str] | None = None, sets: dict | None = None,
                   fid_every: str | None = None, nfe_steps: Sequence[int] = NFE_STEPS, nfe_num: int | None = None,
                   curve_num: int | None = None, ema_lengths: Sequence[float] = (), guides: Sequence[str] = (),
                   guidance: float | None = None, echo=print) -> dict:
    """Train each of `models` on `data` into OUT/runs/<family> up to `target` (or take the
    existing runs `runs_given`), evaluate each, and write OUT/results.json, OUT/report.md
    and OUT/grids/. Returns the results; with "signal" set when a signal stopped training
    (the comparison continues from there when run again). `repeats` defaults to 3 on a GPU,
    1 on the CPU. A family with a sampler is also measured at each of `nfe_steps` (empty: not),
    with FID-`nfe_num` (default `fid_num`). `models` None: every registered family. Training records FID-`curve_num` snapshots (default a fifth of
    `fid_num`, at least 4) every `fid_every` (default a fifth of the budget) for the training curves.
    A `sets` key FAMILY.KEY applies to that family only. Each run is also measured at each
    post-hoc EMA length of `ema_lengths` (the runs it trains then track EDM2's two profiles
    unless `sets` chooses posthoc_ema). `guides` ("FAMILY=RUN"): that family is also measured
    with autoguidance by that run, at weight `guidance` (default: the family's)."""
    out = Path(out)
    protocol = check_protocol(fid_num, repeats, device, nfe_steps, nfe_num, curve_num, ema_lengths, guides, guidance)
    sets = posthoc_sets(sets or {}, protocol)
    check_report_folder(out)
    folders = existing_runs(runs_given) if runs_given else planned_runs(out, data, models, target)
    check_guides(protocol, folders)
    family_sets(sets, None)  # an unknown family in FAMILY.KEY fails before any training
    progress = Progress({"train": 0 if runs_given else len(folders), "evaluate": len(folders), "write": 1}, echo,
                        {"train": target.value * 60} if target is not None and target.unit == "minutes" else None)
    if not runs_given:
        stopped_by = train_families(folders, data, preset, target, sets, device,
                                    snapshot_settings(fid_every, protocol.curve_num, target, data), progress, echo)
        if stopped_by:
            echo(f"stopped by {signal.Signals(stopped_by).name}: run the same command again to continue the "
                 "comparison.")
            return {"signal": stopped_by}
    check_ema_lengths(folders, protocol)
    measured = evaluate_families(folders, protocol, device, progress)
    progress.line("write", "writing grids, plots and the report")
    add_grids(measured, folders, out, device)
    results = {"protocol": describe_protocol(protocol, measured, device, target), "models": measured, "papers": PAPERS}
    write_report(out, results)
    progress.line(None, f"done: {out / 'index.html'} and {out / 'report.md'}")
    return {**results, "signal": None}
