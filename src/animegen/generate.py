"""Sampling from trained models: image i always comes from seed i (models.base.Noise), so a
seed gives the same image whatever the batch size. Used by `animegen sample`, `animegen
eval`, and the training loop's grids and FID snapshots.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from animegen.errors import UserError
from animegen.io import append_json_line, atomic_dir, save_grid, to_uint8
from animegen.models import registry
from animegen.models.base import Model, Noise

WEIGHTS = ("ema", "model")


def sample_batches(model: Model, seeds: Iterable[int], batch_size: int, options: dict | None = None
                   ) -> Iterator[torch.Tensor]:
    """Images for `seeds`, in order, `batch_size` at a time: float N x 3 x R x R in [-1, 1]."""
    seeds = list(seeds)
    for start in range(0, len(seeds), batch_size):
        with torch.no_grad():
            yield model.sample(Noise(seeds[start : start + batch_size], model.device), **(options or {}))


def sample_grid(model: Model, seeds: Iterable[int], batch_size: int, options: dict | None = None) -> np.ndarray:
    """uint8 N x R x R x 3 images for `seeds`."""
    return np.concatenate([to_uint8(x) for x in sample_batches(model, seeds, batch_size, options)])


def load_generator(path: str | os.PathLike, device: torch.device | str = "cpu", weights: str = "ema"
                   ) -> tuple[Model, dict]:
    """The Model of a run's newest checkpoint (or of a checkpoint folder), in eval mode, and
    that checkpoint's state (config, step, nimg, snapshot...)."""
    from animegen.training import checkpoint
    from animegen.training.config import RunConfig

    if weights not in WEIGHTS:
        raise UserError(f"unknown weights {weights!r}; choose ema or model.")
    tensors, state = checkpoint.load(path)
    spec = registry.get(state["model"])
    config = RunConfig.from_json(state["config"], spec)
    model = spec.model(config.model_config)
    checkpoint.load_module(weights, model, tensors)
    state["checkpoint"] = str(checkpoint.find(path))
    return model.to(device).eval().requires_grad_(False), state


def write_samples(run: str, out: str, count: int, seed: int = 0, batch_size: int = 64,
                  options: dict | None = None, grid: str | None = None, device: str = "auto") -> dict:
    """Write images of seeds seed..seed+count-1 as OUT/seed<NNNNNN>.png (atomically), and
    optionally all of them as one grid PNG."""
    from animegen.training.distributed import resolve_device

    if count < 1 or batch_size < 1:
        raise UserError("--count and --batch-size must be positive.")
    model, state = load_generator(run, resolve_device(device))
    options = model.resolve_sample_options(options or {})
    seeds = range(seed, seed + count)
    images = sample_grid(model, seeds, batch_size, options)
    with atomic_dir(out) as tmp:
        for s, image in zip(seeds, images):
            Image.fromarray(image).save(tmp / f"seed{s:06d}.png")
    if grid:
        save_grid(images, grid)
    return {"out": str(out), "count": count, "seeds": [seed, seed + count - 1], "checkpoint": state["checkpoint"],
            "step": state["step"], "sample_options": options, **({"grid": str(grid)} if grid else {})}


def evaluate_run(run: str, metrics: list[str], num: int, split: str = "test", options: dict | None = None,
                 device: str = "auto", batch_size: int = 64, seed: int = 0, progress: bool = False,
                 record: bool = True) -> dict:
    """Metrics of a run's EMA generator against a split of its training dataset, with the
    exact protocol that produced them. With `record`, also appended to RUN/metrics.jsonl as
    an "eval" event when `run` is a run folder, so the folder keeps every number it produced."""
    from animegen.metrics import evaluate_generator
    from animegen.training.distributed import resolve_device

    if num < 1:
        raise UserError("--num must be positive.")
    dev = resolve_device(device)
    model, state = load_generator(run, dev)
    options = model.resolve_sample_options(options or {})
    data = state["config"]["data"]
    if not Path(data).exists():
        raise UserError(f"the run's dataset {data} is missing; prepare it again at the same path.")
    batches = sample_batches(model, range(seed, seed + num), batch_size, options)
    result = evaluate_generator(batches, real=data, split=split, metrics=tuple(metrics), num=num, device=dev,
                                batch_size=batch_size, generator=model, progress=progress)
    protocol = {"model": state["model"], "checkpoint": state["checkpoint"], "step": state["step"],
                "kimg": state["nimg"] / 1000, "weights": "ema", "images": num, "seeds": [seed, seed + num - 1],
                "real": data, "split": split, "sample_options": options}
    result = {**result, "protocol": protocol}
    log = Path(run) / "metrics.jsonl"
    if record and log.is_file():
        append_json_line(log, {"event": "eval", "step": state["step"], "kimg": protocol["kimg"], "time": time.time(),
                               **result})
    return result
