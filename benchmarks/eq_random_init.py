"""EQ-T / EQ-T_frac / EQ-R of randomly initialized StyleGAN3 generators, one JSON line per
model: a cheap check of the equivariance protocol, runnable against any commit (it only
calls `equivariance(model, num=..., batch_size=...)`).

    OMP_NUM_THREADS=1 python benchmarks/eq_random_init.py --num 500 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from animegen.metrics.equivariance import equivariance
from animegen.models import registry
from animegen.training.config import make_config


def measure(model_name: str, preset: str, resolution: int, num: int, batch_size: int) -> dict:
    spec = registry.get(model_name)
    config = make_config(spec, "data", resolution, preset, {}, seed=0)
    torch.manual_seed(0)
    model = spec.model(config.model_config).eval()
    start = time.perf_counter()
    scores = equivariance(model, num=num, batch_size=batch_size)
    return {"model": model_name, "preset": preset, "resolution": resolution, "num": num, "batch_size": batch_size,
            **scores, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["stylegan3-t", "stylegan3-r"])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--num", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.model:
        print(json.dumps(measure(name, args.preset, args.resolution, args.num, args.batch_size)), flush=True)


if __name__ == "__main__":
    main()
