"""Projection of real faces into a StyleGAN run: each loss option in W and W+.

Projects the first COUNT images of the dataset's test split (already at the run's resolution)
with every --losses entry in every --spaces entry, then prints one row per option: mean PSNR
of the reconstructions, mean Inception pool3 L2 distance between target and reconstruction
(the TF-FID network at 299 px, uint8 images, as the metrics use it) and the seconds of
optimisation per image. Writes a grid (targets above one row of reconstructions per option)
and the table as JSON.

    python benchmarks/projection.py --run /work/exp/runs/stylegan2 --data /work/exp/faces32 --count 16 \
        --steps 200 --grid docs/results/latent-projection.png
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from animegen.data.store import load_split
from animegen.generate import load_generator, sample_batches
from animegen.io import save_grid, to_uint8
from animegen.latent.perceptual import ProjectionLoss, parse_loss
from animegen.latent.project import RENDER_BATCH, project, psnr
from animegen.metrics.inception import InceptionV3

LOSSES = "pixel,inception,discriminator,pixel+discriminator,pixel+inception"


def measure(model, targets: np.ndarray, run: str, space: str, loss: str, steps: int, inception: InceptionV3) -> dict:
    x = torch.from_numpy(targets).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    started = time.perf_counter()
    result = project(model, x, space, ProjectionLoss(parse_loss(loss), x, run), steps)
    seconds = time.perf_counter() - started
    recon = to_uint8(torch.cat(list(sample_batches(model, range(len(x)), RENDER_BATCH, result.options,
                                                    given=result.latents))))
    distance = np.linalg.norm(inception(targets) - inception(recon), axis=1)
    return {"space": space, "loss": loss, "psnr": float(np.mean([psnr(a, b) for a, b in zip(targets, recon)])),
            "pool3_l2": float(distance.mean()), "seconds_per_image": seconds / len(x), "recon": recon}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True, help="the run's prepared dataset (its test split is projected)")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--spaces", default="w,w+")
    parser.add_argument("--losses", default=LOSSES)
    parser.add_argument("--grid", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_generator(args.run, "cpu")
    targets = np.array(load_split(args.data, "test")[: args.count])
    inception = InceptionV3(device="cpu")
    rows = []
    print(f"{'space':>5} {'loss':<22} {'PSNR dB':>8} {'pool3 L2':>9} {'s/image':>8}")
    for space in args.spaces.split(","):
        for loss in args.losses.split(","):
            row = measure(model, targets, args.run, space, loss, args.steps, inception)
            rows.append(row)
            print(f"{space:>5} {loss:<22} {row['psnr']:8.2f} {row['pool3_l2']:9.2f} {row['seconds_per_image']:8.2f}",
                  flush=True)
    if args.grid:
        save_grid(np.concatenate([targets] + [r["recon"] for r in rows]), args.grid, columns=len(targets))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: v for k, v in r.items() if k != "recon"} for r in rows] + [{"steps": args.steps}], f, indent=1)


if __name__ == "__main__":
    main()
