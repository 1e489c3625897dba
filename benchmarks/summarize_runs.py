"""Summarize finished runs as the results table of ../shared/docs/PROTOCOL.md.

    python benchmarks/summarize_runs.py RUN [RUN ...] [--device "2-core CPU"] [--commit abc1234]

Reads each RUN/config.json and RUN/metrics.jsonl; prints one markdown row per run: model,
preset, device, training minutes, kimg, img/s, peak memory, the main loss over the first
and last 10% of progress lines, FID at every snapshot (first -> last), the last snapshot's
KID and precision/recall, and the equivariance of the last `animegen eval` that measured it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from animegen.metrics.equivariance import EQ_METRICS

MAIN_LOSS = {"vae": "loss", "dcgan": "loss_g", "ddpm": "loss"}  # GAN losses do not "fall"; shown for the record


def read_events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarize(run: Path, device: str, commit: str) -> str:
    config = json.loads((run / "config.json").read_text())
    events = read_events(run)
    train = [e for e in events if e["event"] == "train"]
    fids = [e for e in events if e["event"] == "fid"]
    end = [e for e in events if e["event"] == "end"][-1]
    model = config["model"]
    key = MAIN_LOSS.get(model, "loss_d" if "loss_d" in train[0] else "loss")
    tenth = max(1, len(train) // 10)
    loss = f"{key} {mean([e[key] for e in train[:tenth]]):.4g} → {mean([e[key] for e in train[-tenth:]]):.4g}"
    fid = " → ".join(f"{e['fid']:.1f} ({e['train_seconds'] / 60:.0f} min)" for e in fids) or "—"
    preset = config["preset"]
    last = fids[-1] if fids else {}
    kid = f"{last['kid']:.1f} ± {last['kid_std']:.1f}" if "kid" in last else "—"
    pr = f"{last['precision']:.3f} / {last['recall']:.3f}" if "precision" in last else "—"
    return (f"| {model} | {preset} | {device} | {end['train_seconds'] / 60:.1f} min | {end['kimg']:.1f} | "
            f"{end['img_per_s']:.1f} | {end['peak_mem_mb']:.0f} MB | {fid} | {kid} | {pr} | "
            f"{equivariance(events)} | {loss} | {commit} |")


def equivariance(events: list[dict]) -> str:
    """EQ-T / EQ-T_frac / EQ-R in dB, the sample count and, where recorded, the transform
    count, from the newest eval event that has them."""
    evals = [e for e in events if e["event"] == "eval" and any(k in e for k in EQ_METRICS)]
    if not evals:
        return "—"
    last = evals[-1]
    values = " / ".join(f"{last[k]:.1f}" if k in last else "—" for k in EQ_METRICS)
    transforms = f", {last['eq_transforms']} transforms" if "eq_transforms" in last else ""
    return f"{values} ({last['protocol']['images']}{transforms})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--commit", default="?")
    args = parser.parse_args()
    print("| model | preset | device | training | kimg | img/s | peak mem (training steps) | FID-1k per snapshot "
          "| KID×10³ (last) | P / R (last) | EQ-T / EQ-T_frac / EQ-R, dB (samples, transforms) | loss first → last 10% | commit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        print(summarize(run, args.device, args.commit))


if __name__ == "__main__":
    main()
