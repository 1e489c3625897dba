"""`animegen demo`: the main job on the embedded default dataset.

Synthesize the default faces, train the family that learns fastest on a CPU (DCGAN, see
docs/results/cpu-tiny.md) for about two minutes, write a grid of samples, and say where
everything is. Idempotent: a second run reuses the dataset and the trained model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import torch

from animegen import runs
from animegen.data.store import is_dataset, load_split, read_manifest
from animegen.data.synth import synthesize_dataset
from animegen.generate import load_generator, sample_grid
from animegen.io import save_grid
from animegen.training.loop import Target, train

DEMO_FACES, DEMO_RESOLUTION, DEMO_SEED = 2000, 32, 0
DEMO_MODEL, DEMO_MINUTES = "dcgan", 2.0


def cpu_threads(default: int) -> int:
    """Torch threads for the demo: the cores other processes leave idle (by the 1-minute load
    average), at least 1 and at most `default`; with OMP_NUM_THREADS set, `default` (the
    user's choice). Threads beyond the idle cores wait on each other at every op: on the
    2-core dev box, 2 threads trained 2-5x slower than 1 under load, and 1.9x faster idle
    (docs/training.md)."""
    if "OMP_NUM_THREADS" in os.environ or not hasattr(os, "getloadavg"):
        return default
    idle = (os.cpu_count() or 1) - round(os.getloadavg()[0])
    return max(1, min(idle, default))


def run_demo(out: str | os.PathLike, minutes: float = DEMO_MINUTES) -> Iterator[str]:
    """Make OUT/data, OUT/data-grid.png, OUT/run and OUT/samples.png (each once); yields lines to print."""
    out = Path(out)
    data = out / "data"
    if is_dataset(data):
        yield f"reusing the dataset in {data}"
    else:
        yield f"synthesizing {DEMO_FACES} faces at {DEMO_RESOLUTION}x{DEMO_RESOLUTION} into {data} ..."
        synthesize_dataset(data, count=DEMO_FACES, resolution=DEMO_RESOLUTION, seed=DEMO_SEED)
    counts = read_manifest(data)["counts"]
    yield f"dataset: {data} ({counts['train']} train, {counts['test']} test)"
    grid = save_grid(load_split(data, "train")[:64], out / "data-grid.png")
    yield f"grid of 64 training faces: {grid}"

    run = out / "run"
    default_threads = torch.get_num_threads()
    torch.set_num_threads(cpu_threads(default_threads))
    try:
        if runs.Run(run).steps():
            yield f"reusing the trained model in {run}"
        else:
            yield (f"training {DEMO_MODEL} (preset tiny) on the CPU, {torch.get_num_threads()} thread(s), "
                   f"for {minutes:g} minutes into {run} ...")
            log: list[str] = []
            train(str(run), model=DEMO_MODEL, data=str(data), preset="tiny", target=Target(minutes=minutes),
                  device="cpu", echo=log.append)
            yield log[-1]
        model, state = load_generator(run)
        samples = save_grid(sample_grid(model, range(64), batch_size=64), out / "samples.png")
    finally:
        torch.set_num_threads(default_threads)
    yield f"64 samples (seeds 0-63) after {state['nimg'] / 1000:.1f} kimg: {samples}"
    yield f"training curves: tensorboard --logdir {run / 'tb'}   (or {run / 'metrics.jsonl'})"
    yield f"more samples: animegen sample {run} --count 256 --out {out / 'more'} --grid {out / 'more.png'}"
    yield f"train longer: animegen train --out {run} --resume --minutes {2 * minutes:g}"
