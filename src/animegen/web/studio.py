"""What the web page asks for, done by the latent library: the loaded runs, their model
cards and directions, and requests validated and rendered into PNG bytes, each with the
`animegen sample` command that writes the same bytes. Nothing here knows about HTTP.

Every request value is checked here (the page is never trusted): unknown keys, types and
ranges are a UserError with one line, which the app returns as a 400.
"""

from __future__ import annotations

import io
import numbers
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from animegen.data.limits import check_int
from animegen.errors import UserError
from animegen.generate import load_generator, sample_batches
from animegen.io import to_uint8
from animegen.latent.directions import Direction, edit_space, load_directions, parse_strength
from animegen.latent.plane import check_point, plane_latents
from animegen.models import registry
from animegen.models.base import Model
from animegen.runs import describe_run
from animegen.settings import MAX_SEED

MAX_GRID = 16
MAX_STEPS = 1000
MAX_STRENGTH = 10.0
REQUEST_KEYS = {"run", "view", "seed", "count", "plane", "options", "edits"}


@dataclass
class LoadedRun:
    """One run the server was started with; the page names it by `index` only."""

    index: int
    path: str
    model: Model
    state: dict
    card: dict
    directions: dict[str, Direction] = field(default_factory=dict)
    directions_file: str | None = None  # where `directions` are on disk, for the commands shown


class Studio:
    """The runs given to `animegen serve`, each loaded once."""

    def __init__(self, runs: list[str], directions_files: list[str] = (), device: str = "cpu"):
        if not runs:
            raise UserError("give at least one run to serve.")
        self.runs = [self._load(i, path, directions_files, device) for i, path in enumerate(runs)]

    @staticmethod
    def _load(index: int, path: str, directions_files, device: str) -> LoadedRun:
        model, state = load_generator(path, device)
        info = describe_run(path)
        card = {key: info[key] for key in ("family", "preset", "dataset", "kimg", "best_fid")}
        card["resolution"] = model.resolution
        loaded = LoadedRun(index, str(path), model, state, card)
        for file in directions_files:
            try:
                loaded.directions.update(load_directions(file, model))
                loaded.directions_file = str(file)
            except UserError:
                continue  # a file for another of the served runs
        return loaded

    def run(self, index) -> LoadedRun:
        return self.runs[check_int("run", index, 0, len(self.runs) - 1)]

    def describe(self) -> list[dict]:
        """The page's view of every run: its card, the controls it takes and its directions."""
        return [{"index": r.index, "name": Path(r.path).name, "card": r.card, "controls": controls(r.model),
                 "directions": [{"name": d.name, "method": d.method, "layers": d.layers, "scale": d.scale}
                                for d in r.directions.values()]} for r in self.runs]

    def generate(self, request: dict) -> dict:
        """Images for a page request: {"images": [{"seed", "name", "png"}], "command"}."""
        unknown = set(request) - REQUEST_KEYS
        if unknown:
            raise UserError(f"unknown request field(s): {', '.join(sorted(unknown))}.")
        run = self.run(request.get("run"))
        model = run.model
        options = model.resolve_sample_options(sample_options(model, request.get("options") or {}))
        edits = self._edits(run, request.get("edits") or {})
        plane = request.get("plane")
        if plane is not None:
            x, y = _point(plane)
            seed, given = plane_latents(model, x, y, options)
            seeds, target = [seed], ["--plane", f"{x:g}", f"{y:g}"]
        else:
            seed = check_int("seed", request.get("seed", 0), 0, MAX_SEED)
            count = check_int("count", request.get("count", 1), 1, MAX_GRID)
            if seed + count - 1 > MAX_SEED:
                raise UserError(f"seeds {seed}..{seed + count - 1} are out of range: at most {MAX_SEED}.")
            seeds, given, target = list(range(seed, seed + count)), None, ["--seed", str(seed), "--count", str(count)]
        with torch.no_grad():
            batch = next(sample_batches(model, seeds, len(seeds), options, given=given, edits=edits))
        images = [{"seed": s, "name": f"seed{s:06d}.png", "png": png_bytes(image)}
                  for s, image in zip(seeds, to_uint8(batch))]
        return {"images": images, "command": self._command(run, target, options, request.get("edits") or {})}

    def _edits(self, run: LoadedRun, edits) -> list[tuple[Direction, float]]:
        if not isinstance(edits, dict):
            raise UserError("edits must be an object {direction: strength}.")
        out = []
        for name, strength in edits.items():
            if name not in run.directions:
                raise UserError(f"no direction {name!r} for this run.")
            value = parse_strength(str(strength), f"edit {name}")
            if abs(value) > MAX_STRENGTH:
                raise UserError(f"edit {name}: the strength must be in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}].")
            if value:
                out.append((run.directions[name], value))
        return out

    @staticmethod
    def _command(run: LoadedRun, target: list[str], options: dict, edits: dict) -> str:
        """The `animegen sample` command that writes exactly these images."""
        args = ["animegen", "sample", run.path, *target, "--out", "samples"]
        for key, value in options.items():
            if key in run.model.sample_options and value != DEFAULTS.get(key, object()):
                shown = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value}"
                args += [f"--{key.replace('_', '-')}", shown]
        moved = {k: v for k, v in edits.items() if float(v)}
        if moved:
            args += ["--directions", run.directions_file]
            for name, strength in moved.items():
                args += ["--edit", f"{name}={float(strength):g}"]
        return " ".join(shlex.quote(a) for a in args)


DEFAULTS = {"truncation": 1.0, "temperature": 1.0, "noise_mode": "random", "translate": (0.0, 0.0), "rotate": 0.0}


def controls(model: Model) -> dict:
    """The sample options a family takes, with the page's ranges."""
    family = registry.name_of(model)
    out = {"options": list(model.sample_options), "space": edit_space(model), "family": family,
           "num_ws": getattr(model, "num_ws", None), "max_grid": MAX_GRID, "max_steps": MAX_STEPS}
    if family == "ddpm":
        out["timesteps"] = model.config.timesteps
        out["defaults"] = {"sampler": model.config.sampler, "steps": model.config.sample_steps}
    return out


def sample_options(model: Model, given) -> dict:
    """The request's sample options, typed; ranges are the model's own (resolve_sample_options)."""
    if not isinstance(given, dict):
        raise UserError("options must be an object.")
    unknown = set(given) - set(model.sample_options)
    if unknown:
        raise UserError(f"{registry.name_of(model)} takes no option(s) {', '.join(sorted(unknown))}; "
                        f"it takes {', '.join(model.sample_options) or 'none'}.")
    out = {}
    for key, value in given.items():
        if key in ("sampler", "noise_mode"):
            if not isinstance(value, str):
                raise UserError(f"{key} must be a name.")
            out[key] = value
        elif key in ("steps", "mix_seed", "mix_layer"):
            out[key] = check_int(key, value, 0 if key != "steps" else 1, MAX_STEPS if key == "steps" else MAX_SEED)
        elif key == "translate":
            if not isinstance(value, list) or len(value) != 2:
                raise UserError("translate must be two numbers [x, y].")
            out[key] = tuple(_number(key, v) for v in value)
        else:
            out[key] = _number(key, value)
    return out


def _number(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise UserError(f"{key} must be a finite number, got {value!r}.")
    return float(value)


def _point(plane) -> tuple[float, float]:
    if not isinstance(plane, list) or len(plane) != 2:
        raise UserError("plane must be two numbers [x, y].")
    return check_point(_number("plane x", plane[0]), _number("plane y", plane[1]))


def png_bytes(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 HWC image, exactly as `animegen sample` writes its files."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
