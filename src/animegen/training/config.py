"""A run's configuration: the family's model and objective dataclasses plus `TrainConfig`,
filled from defaults, then the preset, then `--set key=value`, and stored as
RUN/config.json so a run folder describes itself.

The three dataclasses share one flat namespace of field names, so `--set lr=2e-4`
needs no prefix.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from animegen.errors import UserError
from animegen.models.registry import PRESETS, ModelSpec


@dataclass
class TrainConfig:
    """What every family's training shares. `batch` is the global batch (all ranks)."""

    batch: int = 32
    xflip: bool = False  # augment with horizontal flips
    ema_kimg: float = 10.0  # EMA half-life in thousands of images
    ema_rampup: float | None = 0.05  # half-life at most this fraction of images seen (warm-up); None: off
    log_every: str = "50"  # progress line, metrics.jsonl and TensorBoard scalars
    sample_every: str = "500"  # sample grid from fixed seeds
    ckpt_every: str = "1000"
    fid_every: str | None = None  # FID snapshot (also writes a checkpoint); None: off
    fid_num: int = 1000
    keep: int = 3  # newest checkpoints kept (plus the best-FID one)
    grid_seeds: int = 64  # grids show seeds 0..grid_seeds-1
    tensorboard: bool = True  # also write scalars and grids to RUN/tb


@dataclass
class RunConfig:
    model: str
    data: str
    seed: int
    model_config: Any
    objective_config: Any
    train: TrainConfig
    preset: str = "tiny"  # recorded so that a run folder says how it was configured
    overrides: dict = dataclasses.field(default_factory=dict)  # the --set values, as given

    def to_json(self) -> dict:
        return {"model": self.model, "data": self.data, "seed": self.seed, "preset": self.preset,
                "overrides": self.overrides,
                "model_config": dataclasses.asdict(self.model_config),
                "objective_config": dataclasses.asdict(self.objective_config),
                "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_json(cls, obj: dict, spec: ModelSpec) -> "RunConfig":
        return cls(model=obj["model"], data=obj["data"], seed=obj["seed"],
                   model_config=_build(spec.model.config_class, obj["model_config"]),
                   objective_config=_build(spec.objective.config_class, obj["objective_config"]),
                   train=_build(TrainConfig, obj["train"]), preset=obj["preset"], overrides=obj["overrides"])


def make_config(spec: ModelSpec, data: str, resolution: int, preset: str, sets: dict[str, Any],
                seed: int) -> RunConfig:
    """Defaults <- preset <- `sets`; `resolution` comes from the dataset."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    if "resolution" in sets:
        raise UserError("the resolution comes from the dataset; prepare the data at the resolution you want.")
    classes = (spec.model.config_class, spec.objective.config_class, TrainConfig)
    values = [{} for _ in classes]
    for key, value in {**spec.presets.get(preset, {}), **sets}.items():
        i = _owner(classes, key)
        values[i][key] = value
    values[0]["resolution"] = resolution
    built = [_build(c, v) for c, v in zip(classes, values)]
    return RunConfig(spec.name, data, seed, *built, preset=preset, overrides=dict(sets))


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`key=value` strings to a dict; values are read as JSON when they parse, else as text."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r} is not of the form key=value.")
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text
    return out


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _owner(classes, key: str) -> int:
    owners = [i for i, c in enumerate(classes) if key in field_names(c)]
    if not owners:
        known = sorted({n for c in classes for n in field_names(c)} - {"resolution"})
        raise UserError(f"unknown setting {key!r}; known settings: {', '.join(known)}.")
    return owners[0]


def _build(cls, values: dict):
    """Instantiate dataclass `cls` from `values`, checking each value against its default's type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        default = cls.__dataclass_fields__[key].default
        if default is dataclasses.MISSING and fields[key].default_factory is not dataclasses.MISSING:
            default = fields[key].default_factory()
        kwargs[key] = _coerce(key, value, default)
    return cls(**kwargs)


def _coerce(key: str, value, default):
    if value is None or default is None or default is dataclasses.MISSING:
        return tuple(value) if isinstance(value, list) else value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple))
        value = tuple(value) if ok else value
    elif isinstance(default, str):
        ok = True
        value = str(value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(f"setting {key}={value!r} should be of type {type(default).__name__}.")
    return value


class Every:
    """An interval in steps ("500"), thousands of images ("20kimg") or minutes of training ("2min")."""

    UNITS = {"kimg": "kimg", "min": "minutes", "": "steps"}

    def __init__(self, text: str | int | None):
        text = "" if text is None else str(text).strip()
        self.off = text in ("", "0", "none", "None")
        unit = next(u for u in ("kimg", "min", "") if text.endswith(u))
        self.unit = self.UNITS[unit]
        number = text[: len(text) - len(unit)] if unit else text
        try:
            self.every = 0.0 if self.off else float(number)
        except ValueError:
            raise UserError(f"interval {text!r} is not a number of steps, 'Nkimg' or 'Nmin'.") from None
        if not self.off and self.every <= 0:
            raise UserError(f"interval {text!r} must be positive.")

    def due(self, before: dict[str, float], after: dict[str, float]) -> bool:
        """True when a multiple of the interval lies in (before, after]; clocks are dicts
        with 'steps', 'kimg' and 'minutes'."""
        if self.off:
            return False
        return math.floor(after[self.unit] / self.every) > math.floor(before[self.unit] / self.every)
