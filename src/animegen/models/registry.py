"""Model families by name. Adding a family = one new module defining a `ModelSpec`, plus
one line in `FAMILIES` below.

A family module (e.g. animegen/models/vae.py) holds, top to bottom: its config
dataclasses, its networks, its `Model` subclass, its `Objective` subclass, and its spec:

    SPEC = ModelSpec(
        name="vae",
        description="one line for `animegen train --help`",
        model=VAE,                       # a models.base.Model subclass
        objective=VAEObjective,          # a training.objective.Objective subclass
        presets={"tiny": {...}, "paper64": {...}},
    )

Presets are flat {field: value} overrides of the three config dataclasses' defaults
(model.config_class, objective.config_class, training.config.TrainConfig). Every family
has the presets "tiny" (a training step in well under a second on CPU at 16-32 px) and
"paper64" (64x64 on one GPU, sized like the paper's models). The resolution always comes
from the dataset, so architectures derive their depth from `resolution`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from animegen.errors import UserError

PRESETS = ("tiny", "paper64")

# name -> "module:attribute" of its ModelSpec; imported only when asked for.
FAMILIES: dict[str, str] = {
    "vae": "animegen.models.vae:SPEC",
    "dcgan": "animegen.models.dcgan:SPEC",
    "ddpm": "animegen.models.ddpm:SPEC",
    "stylegan2": "animegen.models.stylegan2:SPEC",
    "stylegan3-t": "animegen.models.stylegan3:SPEC_T",
    "stylegan3-r": "animegen.models.stylegan3:SPEC_R",
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    model: type  # models.base.Model subclass
    objective: type  # training.objective.Objective subclass
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)


def names() -> list[str]:
    return list(FAMILIES)


def get(name: str) -> ModelSpec:
    if name not in FAMILIES:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(FAMILIES)}.")
    module, attribute = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), attribute)
