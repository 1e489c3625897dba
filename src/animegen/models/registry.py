"""Model families by name. A family is two modules and one line in `FAMILIES` below (or one
`register` call, from a plugin module named in ANIMEGEN_PLUGINS):

  animegen/models/<family>.py                what generates: the model config dataclass, the
                                             networks, the `Model` subclass (models.base)
  animegen/training/objectives/<family>.py   how it is trained: the objective config
                                             dataclass, the `Objective` subclass
                                             (training.objective) and the family's spec:

    SPEC = ModelSpec(
        name="vae",
        description="one line for `animegen train --help`",
        model=VAE,                       # a models.base.Model subclass
        objective=VAEObjective,          # a training.objective.Objective subclass
        presets={"tiny": {...}, "paper64": {...}},
    )

What a family can do (latent spaces, inversion, sampler settings...) it declares on its Model
(`models.base.Capabilities`, `Model.options`); nothing outside the family asks for it by name.

A family from outside the package: a module that calls `register(...)` when imported, named
in the environment variable ANIMEGEN_PLUGINS (comma-separated module names, importable from
sys.path); every command, and every process a command starts, then knows it.

The split keeps the layers pointing one way: loading a generator to sample from it
(`model_class`) imports the model module only, never the training code (optimizers, ADA);
training (`get`) imports both.

Presets are flat {field: value} overrides of the three config dataclasses' defaults
(model.config_class, objective.config_class, training.config.TrainConfig). Every family
has the presets "tiny" (a training step in well under a second on CPU at 16-32 px) and
"paper64" (64x64 on one GPU, sized like the paper's models). The resolution always comes
from the dataset, so architectures derive their depth from `resolution`.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass, field
from typing import Any

from animegen.errors import UserError

PRESETS = ("tiny", "paper64")

# name -> ("module:attribute" of its Model class, "module:attribute" of its ModelSpec); imported when asked for.
FAMILIES: dict[str, tuple[str, str]] = {
    "vae": ("animegen.models.vae:VAE", "animegen.training.objectives.vae:SPEC"),
    "dcgan": ("animegen.models.dcgan:DCGAN", "animegen.training.objectives.dcgan:SPEC"),
    "ddpm": ("animegen.models.ddpm:DDPM", "animegen.training.objectives.ddpm:SPEC"),
    "edm": ("animegen.models.edm:EDM", "animegen.training.objectives.edm:SPEC"),
    "stylegan2": ("animegen.models.stylegan2:StyleGAN2", "animegen.training.objectives.stylegan2:SPEC"),
    "stylegan3-t": ("animegen.models.stylegan3:StyleGAN3", "animegen.training.objectives.stylegan3:SPEC_T"),
    "stylegan3-r": ("animegen.models.stylegan3:StyleGAN3R", "animegen.training.objectives.stylegan3:SPEC_R"),
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    model: type  # models.base.Model subclass
    objective: type  # training.objective.Objective subclass
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)


PLUGINS = "ANIMEGEN_PLUGINS"


def register(name: str, model: str, spec: str) -> None:
    """Add family `name`: "module:attribute" of its Model class and of its ModelSpec."""
    if name in FAMILIES and FAMILIES[name] != (model, spec):
        raise ValueError(f"family {name!r} is registered already, as {FAMILIES[name]}")
    FAMILIES[name] = (model, spec)


@functools.cache
def _load_plugins() -> None:
    """Import the modules named in ANIMEGEN_PLUGINS once; each registers its families."""
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise UserError(f"{PLUGINS} names {module!r}, which cannot be imported: {e}.") from None


def names() -> list[str]:
    _load_plugins()
    return list(FAMILIES)


def families_that(can) -> list[str]:
    """The families whose declared capabilities satisfy `can(capabilities)`, for messages that
    say where to turn (this imports every family's model module)."""
    return [name for name in names() if can(model_class(name).capabilities)]


def model_class(name: str) -> type:
    """The family's Model class, importing nothing of its training."""
    return _load(name, 0)


def get(name: str) -> ModelSpec:
    """The family's whole spec (model, objective, presets), for training."""
    return _load(name, 1)


def name_of(model) -> str:
    """The family name of a Model instance."""
    _load_plugins()
    path = f"{type(model).__module__}:{type(model).__qualname__}"
    return next(name for name, (model_path, _) in FAMILIES.items() if model_path == path)


def _load(name: str, which: int):
    _load_plugins()
    if name not in FAMILIES:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(FAMILIES)}.")
    module, attribute = FAMILIES[name][which].split(":")
    return getattr(importlib.import_module(module), attribute)
