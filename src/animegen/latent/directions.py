"""Latent directions and edits.

A direction is a unit vector in a family's edit space: W for StyleGAN (applied to a range
of style inputs), z for the others (the DDPM's z is its initial noise). An edit adds
`strength * scale * direction`, with `scale` the standard deviation of the latents along
the direction, so a strength counts standard deviations whatever the method.

A directions file is one safetensors file: a tensor per direction (its name) and, in the
header's metadata under "animegen", a JSON object with the family, the space, the latent
size and each direction's method, layer range and scale. Nothing in it is executed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors

from animegen.errors import UserError
from animegen.io import atomic_write_bytes
from animegen.models import registry
from animegen.models.base import Latents, Model

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAMED_RANGES = ("all", "coarse", "middle", "fine")
MAX_STRENGTH = 100.0


@dataclass
class Direction:
    name: str
    vector: torch.Tensor  # unit length, flattened edit-space latent
    method: str  # ganspace | sefa | labels | ...
    layers: tuple[int, int] | None  # first and last style input edited (StyleGAN); None: the whole latent
    scale: float  # standard deviation of the latents along the vector
    details: dict  # method-specific facts (explained variance, classifier accuracy, ...)


def edit_space(model: Model) -> str:
    return model.capabilities.edit_space


def space_size(model: Model) -> int:
    return model.latent_size(edit_space(model))


def layer_range(model: Model, spec: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """Style inputs a StyleGAN edit acts on, from "all", "coarse", "middle", "fine" (thirds of
    the style inputs, coarse first), "A-B" or "A" (inclusive indices); None for z spaces."""
    if edit_space(model) != "w":
        if spec not in (None, "all"):
            raise UserError(f"layer ranges apply to StyleGAN's W (a W space's style inputs); {registry.name_of(model)} "
                            "edits its whole z.")
        return None
    n = model.num_ws
    if spec is None or spec == "all":
        return (0, n - 1)
    if isinstance(spec, tuple):
        first, last = spec
    elif spec in NAMED_RANGES:
        bounds = [round(n * i / 3) for i in range(4)]
        k = NAMED_RANGES.index(spec) - 1
        first, last = bounds[k], bounds[k + 1] - 1
    else:
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", str(spec).strip())
        if not match:
            raise UserError(f"layer range {spec!r}: use all, coarse, middle, fine, A-B or A.")
        first, last = int(match[1]), int(match[2] or match[1])
    if not 0 <= first <= last < n:
        raise UserError(f"layer range {spec!r} is out of range: this generator has style inputs 0..{n - 1}.")
    return (first, last)


def edit_vectors(model: Model, latents: Latents) -> torch.Tensor:
    """(N, D): each image's edit-space latent as one vector (StyleGAN: its w, before the
    broadcast to the style inputs; others: z flattened)."""
    return latents["w"][:, 0] if edit_space(model) == "w" else latents["z"].flatten(1)


def apply_edits(model: Model, latents: Latents, edits: list[tuple[Direction, float]]) -> Latents:
    """`latents` moved along each (direction, strength); a strength of 0 changes nothing."""
    if not edits:
        return latents
    space = edit_space(model)
    latent = latents[space].clone()
    for direction, strength in edits:
        step = (strength * direction.scale) * direction.vector.to(latent)
        if space == "w":
            first, last = direction.layers
            latent[:, first : last + 1] += step
        else:
            latent += step.reshape(latent.shape[1:])
    return {**latents, space: latent}


def save_directions(path: str | os.PathLike, model: Model, directions: list[Direction]) -> Path:
    """Write `directions` of `model`'s edit space to the safetensors file `path`, atomically."""
    names = [d.name for d in directions]
    if len(set(names)) != len(names):
        raise UserError(f"direction names must differ: {', '.join(names)}.")
    header = {"family": registry.name_of(model), "space": edit_space(model), "size": space_size(model),
              "num_ws": model.num_ws,
              "directions": {d.name: {"method": d.method, "layers": list(d.layers) if d.layers else None,
                                      "scale": d.scale, "details": d.details} for d in directions}}
    tensors = {d.name: d.vector.detach().float().cpu().contiguous() for d in directions}
    data = save_safetensors(tensors, metadata={"animegen": json.dumps(header)})
    atomic_write_bytes(path, data)
    return Path(path)


def load_directions(path: str | os.PathLike, model: Model) -> dict[str, Direction]:
    """The directions of file `path`, checked against `model`; problems are one UserError line."""
    name = Path(path).name
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})["animegen"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise UserError(f"directions file {path} does not exist.") from None
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"{name} is not an animegen directions file ({type(e).__name__}: {e}).") from None
    family, size = registry.name_of(model), space_size(model)
    if header.get("family") != family or header.get("size") != size or header.get("num_ws") != model.num_ws:
        raise UserError(f"{name} holds directions of a {header.get('family')} model with a {header.get('size')}-value "
                        f"{header.get('space')}; this run is {family} with a {size}-value {edit_space(model)}.")
    directions = {}
    for key, info in header.get("directions", {}).items():
        vector = tensors.get(key)
        if vector is None or vector.shape != (size,) or not torch.isfinite(vector).all():
            raise UserError(f"{name}: direction {key!r} is missing or is not {size} finite values.")
        layers = info.get("layers")
        directions[key] = Direction(key, vector.float(), str(info.get("method")),
                                    layer_range(model, tuple(layers)) if layers else None, float(info["scale"]),
                                    info.get("details") or {})
    return directions


def load_all_directions(paths, model: Model) -> dict[str, Direction]:
    """The directions of every file in `paths`, by name (a later file's name wins)."""
    directions = {}
    for path in paths:
        directions.update(load_directions(path, model))
    return directions


def parse_edits(specs: list[str], directions: dict[str, Direction], model: Model) -> list[tuple[Direction, float]]:
    """["NAME=STRENGTH", "NAME=STRENGTH@LAYERS", ...] -> [(direction, strength)]; @LAYERS
    (StyleGAN) applies the direction to other style inputs than its own (layer_range)."""
    edits = []
    for spec in specs:
        key, _, value = spec.partition("=")
        value, _, layers = value.partition("@")
        if key not in directions:
            known = ", ".join(sorted(directions)) or "none (pass --directions FILE)"
            raise UserError(f"--edit {spec!r}: no direction {key!r}; known: {known}.")
        direction = directions[key]
        if layers:
            direction = with_layers(direction, model, layers)
        edits.append((direction, parse_strength(value, f"--edit {spec!r}")))
    return edits


def parse_strength(text: str, what: str) -> float:
    try:
        strength = float(text)
    except ValueError:
        strength = float("nan")
    if not abs(strength) <= MAX_STRENGTH:  # also refuses NaN
        raise UserError(f"{what}: the strength must be a number in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}].")
    return strength


def with_layers(direction: Direction, model: Model, spec: str | None) -> Direction:
    """`direction` applied to another layer range (StyleGAN)."""
    if spec is None:
        return direction
    return Direction(direction.name, direction.vector, direction.method, layer_range(model, spec), direction.scale,
                     direction.details)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise UserError(f"direction name {name!r}: use letters, digits, '_', '-' and '.', up to 64 characters.")
    return name
