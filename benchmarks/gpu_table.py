"""The Markdown table of benchmarks/gpu_check.sh, from its output folder.

    python benchmarks/gpu_table.py OUT [--device "NVIDIA H200 (cuda)"]

One row per run folder under OUT/runs: family, preset and resolution, precision, compile,
the step the SIGTERM stopped it at (and its exit code, OUT/logs/NAME.kill-rc), the step the
resumed run ended at, training img/s (the last progress window, after any compiling), peak
memory of training steps, the FID snapshot, and the wall time of both legs (OUT/logs/NAME.wall-s).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ("run", "family", "preset", "px", "precision", "compile", "killed at step (rc)", "resumed to step",
           "img/s", "peak MB", "FID", "wall s")


def row(run: Path, logs: Path) -> list[str]:
    config = json.loads((run / "config.json").read_text())
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ends = [e for e in events if e["event"] == "end"]
    trains = [e for e in events if e["event"] == "train"]
    fids = [e for e in events if e["event"] == "fid"]
    killed = next((e for e in ends if e["stopped_early"]), None)
    rc = _read(logs / f"{run.name}.kill-rc")
    return [run.name, config["model"], config["preset"], str(config["resolution"]), config["train"]["precision"],
            str(config["train"]["compile"]).lower(),
            f"{killed['step']} ({rc})" if killed else f"not stopped ({rc})",
            str(ends[-1]["step"]) if ends and ends[-1] is not killed else "—",
            f"{trains[-1]['img_per_s']:.1f}" if trains else "—",
            f"{max(e['peak_mem_mb'] for e in ends):.0f}" if ends else "—",
            f"{fids[-1]['fid']:.2f} ({fids[-1]['num']})" if fids else "—",
            _read(logs / f"{run.name}.wall-s")]


def table(out: Path, device: str) -> str:
    runs = sorted((p for p in (out / "runs").iterdir() if (p / "metrics.jsonl").exists()),
                  key=lambda p: p.stat().st_mtime)
    lines = [f"Device: {device}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(run, out / "logs")) + " |" for run in runs]
    return "\n".join(lines) + "\n"


def _read(path: Path) -> str:
    return path.read_text().strip() if path.exists() else "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="unnamed device")
    args = parser.parse_args()
    print(table(args.out, args.device), end="")


if __name__ == "__main__":
    main()
