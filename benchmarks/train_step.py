"""Parameter counts and training-step speed of every family, on random images; optionally
against another checkout of animegen (an older commit in a git worktree) in the same run.

    python benchmarks/train_step.py                       # tiny at 32 px on the CPU
    python benchmarks/train_step.py --preset paper64 --resolution 64 --device cuda
    python benchmarks/train_step.py --counts-only --preset paper64 --resolution 64
    git worktree add /tmp/before <old commit>
    python benchmarks/train_step.py --against /tmp/before --threads 1,2 --rounds 5

Each measurement runs in its own process (one family, one source tree, one thread count):
warm-up steps, then `--steps` timed steps. With --against, the two trees alternate round by
round, so both see the same machine load; the table gives the median img/s over the rounds
and the ratio new / old. The objective is prepared as training prepares it (its NHWC
weights and optional compile) where the tree has that step.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SOURCE = HERE.parents[1] / "src"


def measure(args) -> dict:
    """One family in this process: parameter counts and seconds per timed step."""
    import torch

    from animegen.models import registry
    from animegen.training.config import make_config
    from animegen.training.objective import TrainContext

    torch.set_num_threads(args.threads_one)
    if importlib.util.find_spec("animegen.heap"):  # as the animegen command does (a tree that has it)
        importlib.import_module("animegen.heap").keep_freed_memory()
    device = torch.device(args.device)
    torch.manual_seed(0)
    spec = registry.get(args.family)
    config = make_config(spec, "-", args.resolution, args.preset, {}, 0)
    model = spec.model(config.model_config).to(device)
    objective = spec.objective(model, config.objective_config, TrainContext(device))
    counts = {"model": sum(p.numel() for p in model.parameters()),
              "auxiliary": sum(p.numel() for net in objective.nets.values() for p in net.parameters())}
    if args.counts_only:
        return {**counts, "batch": config.train.batch}
    if hasattr(objective, "prepare"):
        objective.prepare()
    real = torch.rand(config.train.batch, 3, args.resolution, args.resolution, device=device) * 2 - 1
    times = []
    for step in range(args.steps + args.warmup):
        t0 = time.perf_counter()
        objective.train_step(real, step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {**counts, "batch": config.train.batch, "seconds": statistics.median(times[args.warmup:])}


def run_one(source: Path, family: str, threads: int, args) -> dict:
    command = [sys.executable, str(HERE), "--one", family, "--threads-one", str(threads), "--preset", args.preset,
               "--resolution", str(args.resolution), "--device", args.device, "--steps", str(args.steps),
               "--warmup", str(args.warmup)] + (["--counts-only"] if args.counts_only else [])
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "paper64"])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default=None, help="comma-separated families [default: every registered one]")
    parser.add_argument("--threads", default="1", help="comma-separated torch CPU thread counts")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (R1 and path length included)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per family, tree and thread count")
    parser.add_argument("--against", type=Path, default=None, help="another checkout (its root) to compare with")
    parser.add_argument("--counts-only", action="store_true")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process: one measurement
    parser.add_argument("--threads-one", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.family = args.one
        print(json.dumps(measure(args)))
        return

    trees = {"new": SOURCE, **({"old": args.against.resolve() / "src"} if args.against else {})}
    print(f"preset {args.preset}, {args.resolution} px, {args.device}; median of {args.rounds} rounds "
          f"of {args.steps} steps after {args.warmup}" + (f"; old = {args.against}" if args.against else "") + "\n")
    header = "| model | parameters | auxiliary | batch | threads | " + " | ".join(f"{t} img/s" for t in trees)
    print(header + (" | new / old |" if args.against else " |"))
    print("|---" * (5 + len(trees) + bool(args.against)) + "|")
    sys.path.insert(0, str(SOURCE))
    from animegen.models import registry  # this tree's families; each measurement imports its own tree
    for family in args.models.split(",") if args.models else registry.names():
        for threads in map(int, args.threads.split(",")):
            rates = {tree: [] for tree in trees}
            for _ in range(1 if args.counts_only else args.rounds):
                for tree, source in trees.items():  # alternating: both trees see the same load
                    result = run_one(source, family, threads, args)
                    if not args.counts_only:
                        rates[tree].append(result["batch"] / result["seconds"])
            row = (f"| {family} | {result['model'] / 1e6:.2f} M | {result['auxiliary'] / 1e6:.2f} M | {result['batch']} "
                   f"| {threads} |")
            if args.counts_only:
                print(row + " |" * len(trees))
                break
            medians = {tree: statistics.median(r) for tree, r in rates.items()}
            row += " | ".join(f" {m:.1f}" for m in medians.values()) + " |"
            print(row + (f" {medians['new'] / medians['old']:.2f}x |" if args.against else ""), flush=True)


if __name__ == "__main__":
    main()
