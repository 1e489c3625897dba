"""`animegen demo`: the main job on the embedded default dataset.

Idempotent: a second run reuses what the first one made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from animegen.data.store import is_dataset, load_split, read_manifest
from animegen.data.synth import synthesize_dataset
from animegen.io import save_grid

DEMO_FACES, DEMO_RESOLUTION, DEMO_SEED = 2000, 32, 0


def run_demo(out: str | os.PathLike) -> Iterator[str]:
    """Synthesize the default faces into OUT/data (once) and grid them; yields lines to print."""
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
