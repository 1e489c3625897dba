"""Seconds per StyleGAN2 training step (the objective's train_step, no data loading), per
preset, resolution and augmentation mode. Prints a table.

    python benchmarks/stylegan2_step.py                      # tiny at 16 and 32 px, CPU
    python benchmarks/stylegan2_step.py --preset paper64 --resolution 64 --device cuda
    python benchmarks/stylegan2_step.py --model stylegan3-t stylegan3-r --resolution 32

A step is a G step, a D step, and (every 4th / 16th step) the path length / R1 step, so the
mean is taken over a multiple of 16 steps.
"""

from __future__ import annotations

import argparse
import time

import torch

from animegen.models import registry
from animegen.training.config import make_config
from animegen.training.objective import TrainContext


def seconds_per_step(model_name: str, preset: str, resolution: int, augment: str, device: torch.device,
                     steps: int) -> tuple[float, int]:
    spec = registry.get(model_name)
    config = make_config(spec, "data", resolution, preset, {"augment": augment}, seed=0)
    torch.manual_seed(0)
    model = spec.model(config.model_config).to(device)
    objective = spec.objective(model, config.objective_config, TrainContext(device))
    real = torch.rand(config.train.batch, 3, resolution, resolution, device=device) * 2 - 1
    objective.train_step(real, 1)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(steps):
        objective.train_step(real, step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, config.train.batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["stylegan2"], help="stylegan2, stylegan3-t, stylegan3-r")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--resolution", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--augment", nargs="+", default=["off", "fixed:0.3"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{'model':<12} {'preset':<8} {'res':>4} {'augment':<10} {'batch':>5} {'s/step':>8} {'img/s':>8}   "
          f"({device}, {torch.get_num_threads()} threads)")
    for name in args.model:
        for resolution in args.resolution:
            for augment in args.augment:
                seconds, batch = seconds_per_step(name, args.preset, resolution, augment, device, args.steps)
                print(f"{name:<12} {args.preset:<8} {resolution:>4} {augment:<10} {batch:>5} {seconds:>8.3f} "
                      f"{batch / seconds:>8.1f}")


if __name__ == "__main__":
    main()
