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
from typing import Any, ClassVar

from animegen.errors import UserError
from animegen.models import registry
from animegen.models.registry import PRESETS, ModelSpec
from animegen.posthoc import SIGMA_REL_MAX, SIGMA_REL_MIN
from animegen.settings import FRACTION, SEED, Limit, at_least, between, build, field_names, one_of, parsed_by

# (a lambda: Every is defined below)
INTERVAL = parsed_by(lambda text: Every(text), "a number of steps ('500'), 'Nkimg', 'Nmin', or 0 for off")


@dataclass
class TrainConfig:
    """What every family's training shares. `batch` is the global batch (all ranks)."""

    batch: int = 32
    xflip: bool = False  # augment with horizontal flips
    ema_kimg: float = 10.0  # EMA half-life in thousands of images
    ema_rampup: float | None = 0.05  # half-life at most this fraction of images seen (warm-up); None: off
    # Post-hoc EMA (animegen.posthoc): the lengths (sigma_rel) of the power-function EMAs to track
    # beside the ema_kimg EMA, e.g. [0.05, 0.1]; None: off. They are stored every posthoc_every and
    # at the end of a run in RUN/posthoc, from which `animegen ema` makes any length.
    posthoc_ema: tuple[float, ...] | None = None
    posthoc_every: str = "5kimg"
    log_every: str = "50"  # progress line, metrics.jsonl and TensorBoard scalars
    sample_every: str = "500"  # sample grid from fixed seeds
    ckpt_every: str = "1000"
    fid_every: str | None = None  # FID snapshot (also writes a checkpoint); None: off
    # Generated and real (first of the test split) images per snapshot; None: chosen at the first
    # snapshot and recorded (training.snapshots: 1000 and the whole split, or on a CPU a fifth of the time).
    fid_num: int | None = None
    fid_real: int | None = None
    keep: int = 3  # newest checkpoints kept (plus the best-FID one)
    grid_seeds: int = 64  # grids show seeds 0..grid_seeds-1
    tensorboard: bool = True  # also write scalars and grids to RUN/tb
    precision: str = "auto"  # autocast of training steps: "bf16", "fp32", or "auto" (bf16 on CUDA, else fp32)
    compile: bool = False  # torch.compile the networks' forward passes (training steps only)

    limits: ClassVar[dict[str, Limit]] = {
        "batch": between(1, 65536), "ema_kimg": at_least(0, 1e6), "ema_rampup": FRACTION,
        "posthoc_ema": between(SIGMA_REL_MIN, SIGMA_REL_MAX), "posthoc_every": INTERVAL,
        "log_every": INTERVAL, "sample_every": INTERVAL, "ckpt_every": INTERVAL, "fid_every": INTERVAL,
        # snapshots include precision/recall, whose k=3 neighbours need 4 images on each side
        "fid_num": between(4, 10**6), "fid_real": between(4, 10**8),
        "keep": between(1, 10**4), "grid_seeds": between(1, 1024), "precision": one_of("auto", "fp32", "bf16")}

    def __post_init__(self):
        lengths = self.posthoc_ema
        if lengths is not None and (not lengths or len(set(lengths)) < len(lengths)):
            raise ValueError(f"posthoc_ema={list(self.posthoc_ema)} must list distinct lengths, e.g. [0.05, 0.1].")
        if self.posthoc_ema and Every(self.posthoc_every).off:
            raise ValueError("posthoc_every=0 would store no post-hoc EMA snapshots; give an interval such as 5kimg.")


def resolve_precision(precision: str, device_type: str) -> str:
    """"auto" made concrete for a device, so that config.json says what the run trains in."""
    if precision != "auto":
        return precision
    return "bf16" if device_type == "cuda" else "fp32"


@dataclass
class RunConfig:
    model: str
    data: str | None  # None: an import that has no dataset yet
    seed: int
    model_config: Any
    objective_config: Any
    train: TrainConfig
    preset: str = "tiny"  # recorded so that a run folder says how it was configured
    overrides: dict = dataclasses.field(default_factory=dict)  # the --set values, as given
    data_hash: str | None = None  # the dataset's content hash (manifest), checked by --resume and eval
    resumed_changes: list = dataclasses.field(default_factory=list)  # {"step", setting: [old, new]} per --resume

    def to_json(self) -> dict:
        return {"model": self.model, "data": self.data, "data_hash": self.data_hash,
                "resolution": self.model_config.resolution, "seed": self.seed, "preset": self.preset,
                "overrides": self.overrides, "resumed_changes": self.resumed_changes,
                "model_config": dataclasses.asdict(self.model_config),
                "objective_config": dataclasses.asdict(self.objective_config),
                "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_json(cls, obj: dict, spec: ModelSpec) -> "RunConfig":
        return cls(model=obj["model"], data=obj["data"], seed=obj["seed"],
                   model_config=build(spec.model.config_class, obj["model_config"]),
                   objective_config=build(spec.objective.config_class, obj["objective_config"]),
                   train=build(TrainConfig, obj["train"]), preset=obj["preset"], overrides=obj["overrides"],
                   data_hash=obj.get("data_hash"), resumed_changes=obj.get("resumed_changes", []))


def make_config(spec: ModelSpec, data: str, resolution: int, preset: str, sets: dict[str, Any],
                seed: int, data_hash: str | None = None) -> RunConfig:
    """Defaults <- preset <- `sets`; `resolution` comes from the dataset. Every value is
    type- and range-checked, and the family's resolution rule applied, before anything is built."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    if "resolution" in sets:
        raise UserError("the resolution comes from the dataset; prepare the data at the resolution you want.")
    problem = SEED.problem(seed) if isinstance(seed, int) and not isinstance(seed, bool) else "an integer"
    if problem:
        raise UserError(f"--seed {seed} is out of range: it must be {problem}.")
    spec.model.check_resolution(spec.name, resolution)
    classes = (spec.model.config_class, spec.objective.config_class, TrainConfig)
    values = [{} for _ in classes]
    for key, value in {**spec.presets.get(preset, {}), **sets}.items():
        values[_owner(classes, key)][key] = value
    values[0]["resolution"] = resolution
    built = [build(c, v) for c, v in zip(classes, values)]
    return RunConfig(spec.name, data, seed, *built, preset=preset, overrides=dict(sets), data_hash=data_hash)


def changed_settings(stored: dict) -> list[str]:
    """`key=value` for each setting of a stored run config that differs from its preset's."""
    spec = registry.get(stored["model"])
    preset = make_config(spec, stored["data"], stored["model_config"]["resolution"], stored["preset"], {},
                         stored["seed"]).to_json()
    if "precision" not in stored["overrides"]:  # "auto" resolved for the run's device is no change
        preset["train"]["precision"] = stored["train"].get("precision")
    return [f"{key}={json.dumps(value)}" for section in ("model_config", "objective_config", "train")
            for key, value in stored[section].items()
            if json.dumps(value) != json.dumps(preset[section].get(key))]


def describe_change(changes: dict) -> str:
    """{setting: [old, new]} (and "step") as "fid_every 2min -> off, fid_num 1000 -> 200"."""
    def shown(key, value):
        return str(value) if value is not None else "off" if key == "fid_every" else "unset"

    return ", ".join(f"{key} {shown(key, values[0])} -> {shown(key, values[1])}" for key, values in changes.items()
                     if key != "step")


def resume_history(stored: dict) -> list[str]:
    """`runs info`: "step N: what changed" for each resume of a stored run config that changed a setting."""
    return [f"step {entry['step']}: {describe_change(entry)}" for entry in stored.get("resumed_changes", [])]


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`key=value` strings to a dict; values are read as JSON when they parse, else as text."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r} is not of the form key=value.")
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text
    return out


def _owner(classes, key: str) -> int:
    owners = [i for i, c in enumerate(classes) if key in field_names(c)]
    if not owners:
        known = sorted({n for c in classes for n in field_names(c)} - {"resolution"})
        raise UserError(f"unknown setting {key!r}; known settings: {', '.join(known)}.")
    return owners[0]


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
        if not self.off and not (0 < self.every < math.inf):
            raise UserError(f"interval {text!r} must be a positive finite number.")

    def due(self, before: dict[str, float], after: dict[str, float]) -> bool:
        """True when a multiple of the interval lies in (before, after]; clocks are dicts
        with 'steps', 'kimg' and 'minutes'."""
        if self.off:
            return False
        return math.floor(after[self.unit] / self.every) > math.floor(before[self.unit] / self.every)

    def left(self, now: dict[str, float], end: dict[str, float]) -> int:
        """How many times it is due after clock `now` up to clock `end`, counting once more
        for a partial interval at the end (a run ends with a snapshot)."""
        if self.off:
            return 0
        last = math.ceil(end[self.unit] / self.every * (1 - 1e-9))  # a clock a rounding error past a multiple
        return max(last - math.floor(now[self.unit] / self.every), 0)
