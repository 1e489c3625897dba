"""Parameter counts and training-step time of every family and preset, on random images.

    python benchmarks/train_step.py                       # tiny at 32 px on the CPU
    python benchmarks/train_step.py --preset paper64 --resolution 64 --device cuda
    python benchmarks/train_step.py --counts-only --preset paper64 --resolution 64

Prints one Markdown table row per family: parameters of the Model (what is sampled and
EMA-averaged) and of the objective's auxiliary nets, the batch, and the median time of
a training step after warm-up steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from animegen.models import registry
from animegen.training.config import make_config
from animegen.training.objective import TrainContext


def count(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=registry.PRESETS)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default=",".join(registry.names()))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's]")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--counts-only", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"preset {args.preset}, {args.resolution} px, {device}, {torch.get_num_threads()} CPU threads\n")
    print("| model | parameters | auxiliary | batch | step (s) | img/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        torch.manual_seed(0)
        spec = registry.get(name)
        config = make_config(spec, "-", args.resolution, args.preset, {}, 0)
        model = spec.model(config.model_config).to(device)
        objective = spec.objective(model, config.objective_config, TrainContext(device))
        batch = config.train.batch
        row = f"| {name} | {count([model]) / 1e6:.2f} M | {count(objective.nets.values()) / 1e6:.2f} M | {batch} |"
        if args.counts_only:
            print(row + " | |")
            continue
        real = torch.rand(batch, 3, args.resolution, args.resolution, device=device) * 2 - 1
        times = []
        for step in range(args.steps + 2):
            t0 = time.perf_counter()
            objective.train_step(real, step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        median = statistics.median(times[2:])
        print(f"{row} {median:.3f} | {batch / median:.0f} |", flush=True)


if __name__ == "__main__":
    main()
