"""Sampling from trained models: image i always comes from seed i (models.base.Noise), so a
seed gives the same image whatever the batch size. Used by `animegen sample`, `animegen
eval`, and the training loop's grids and FID snapshots.
"""

from __future__ import annotations

import os
import time
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from animegen import runs
from animegen.data.limits import check_file_output, check_int, check_new_folder
from animegen.devices import resolve_device
from animegen.errors import UserError
from animegen.io import atomic_dir, save_grid, to_uint8
from animegen.metrics import evaluate_generator
from animegen.models import registry
from animegen.models.base import SEED_CONVENTIONS, Model
from animegen.settings import MAX_SEED, build

WEIGHTS = ("ema", "model")
MAX_COUNT = 10**8  # images one `sample` writes
MAX_GRID = 1024  # images in one grid PNG


def sample_batches(model: Model, seeds: Iterable[int], batch_size: int, options: dict | None = None,
                   seed_convention: str = "animegen") -> Iterator[torch.Tensor]:
    """Images for `seeds`, in order, `batch_size` at a time: float N x 3 x R x R in [-1, 1].
    `seed_convention` "nvlabs": a seed's latent is NVIDIA's (models.base.NvlabsNoise)."""
    noise = SEED_CONVENTIONS[seed_convention]
    seeds = list(seeds) if not isinstance(seeds, range) else seeds
    for start in range(0, len(seeds), batch_size):
        with torch.no_grad():
            yield model.sample(noise(seeds[start : start + batch_size], model.device), **(options or {}))


def sample_grid(model: Model, seeds: Iterable[int], batch_size: int, options: dict | None = None) -> np.ndarray:
    """uint8 N x R x R x 3 images for `seeds`."""
    return np.concatenate([to_uint8(x) for x in sample_batches(model, seeds, batch_size, options)])


def load_generator(path: str | os.PathLike, device: torch.device | str = "cpu", weights: str = "ema",
                   checkpoint: str | int = "last") -> tuple[Model, dict]:
    """The Model of checkpoint `checkpoint` (last, best, a step, or a folder's path) of run
    `path` (or of checkpoint folder `path`), in eval mode, and that checkpoint's state
    (config, step, nimg, snapshot, and "checkpoint": its folder)."""
    if weights not in WEIGHTS:
        raise UserError(f"unknown weights {weights!r}; choose ema or model.")
    tensors, state = runs.load_checkpoint(path, checkpoint)
    family = registry.model_class(state["model"])
    model = family(build(family.config_class, state["config"]["model_config"]))
    model.load_state_dict(runs.module_state(tensors, weights), strict=True)
    return model.to(resolve_device(device)).eval().requires_grad_(False), state


def check_seeds(seed: int, count: int, name: str = "--count") -> range:
    """Seeds seed..seed+count-1, all of them valid seeds."""
    check_int(name, count, 1, MAX_COUNT)
    if not 0 <= seed or seed + count - 1 > MAX_SEED:
        raise UserError(f"seeds {seed}..{seed + count - 1} are out of range: seeds must be in [0, {MAX_SEED}].")
    return range(seed, seed + count)


def check_batch_size(batch_size: int) -> int:
    return check_int("--batch-size", batch_size, 1, 65536)


def write_samples(run: str, out: str, count: int, seed: int = 0, batch_size: int = 64,
                  options: dict | None = None, grid: str | None = None, device: str = "auto",
                  checkpoint: str | int = "last", progress: bool = False, seed_convention: str = "animegen") -> dict:
    """Write images of seeds seed..seed+count-1 as OUT/seed<NNNNNN>.png, batch by batch as they
    are made (OUT appears only when complete), and optionally all of them as one grid PNG."""
    seeds = check_seeds(seed, count)
    check_batch_size(batch_size)
    if grid and count > MAX_GRID:
        raise UserError(f"a grid of {count} images is too large (at most {MAX_GRID}); drop --grid or sample fewer.")
    check_new_folder("--out", out)
    if grid:
        check_file_output("--grid", grid)
    model, state = load_generator(run, device, checkpoint=checkpoint)
    options = model.resolve_sample_options(options or {})
    shown = []
    with atomic_dir(out) as tmp, tqdm(total=count, unit="img", disable=not progress, leave=False) as bar:
        batches = sample_batches(model, seeds, batch_size, options, seed_convention)
        for start, batch in zip(range(0, count, batch_size), batches):
            images = to_uint8(batch)
            for s, image in zip(seeds[start : start + batch_size], images):
                Image.fromarray(image).save(tmp / f"seed{s:06d}.png")
            if grid:
                shown.append(images)
            bar.update(len(images))
        if grid:
            save_grid(np.concatenate(shown), grid)
    return {"out": str(out), "count": count, "seeds": [seed, seed + count - 1], "checkpoint": state["checkpoint"],
            "step": state["step"], "sample_options": options, "seed_convention": seed_convention,
            **({"grid": str(grid)} if grid else {})}


def evaluate_run(run: str, metrics: list[str], num: int, split: str = "test", options: dict | None = None,
                 device: str = "auto", batch_size: int = 64, seed: int = 0, progress: bool = False,
                 record: bool = True, data: str | None = None, checkpoint: str | int = "last") -> dict:
    """Metrics of a run's EMA generator against a split of its training dataset (or of `data`,
    a copy of it: same content hash), with the exact protocol that produced them. With
    `record`, also appended to RUN/metrics.jsonl as an "eval" event when `run` is a run
    folder, so the folder keeps every number it produced."""
    seeds = check_seeds(seed, num, "--num")
    check_batch_size(batch_size)
    dev = resolve_device(device)
    model, state = load_generator(run, dev, checkpoint=checkpoint)
    options = model.resolve_sample_options(options or {})
    real = runs.Run(run).dataset(state["config"], data)
    batches = sample_batches(model, seeds, batch_size, options)
    result = evaluate_generator(batches, real=real, split=split, metrics=tuple(metrics), num=num, device=dev,
                                batch_size=batch_size, generator=model, progress=progress)
    protocol = {"model": state["model"], "checkpoint": state["checkpoint"], "step": state["step"],
                "kimg": state["nimg"] / 1000, "weights": "ema", "images": num, "seeds": [seed, seed + num - 1],
                "real": real, "split": split, "sample_options": options}
    result = {**result, "protocol": protocol}
    folder = runs.Run(run)
    if record and folder.metrics.is_file():
        folder.append_metrics({"event": "eval", "step": state["step"], "kimg": protocol["kimg"], "time": time.time(),
                               **result})
    return result
