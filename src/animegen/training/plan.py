"""How a training run starts, decided before anything is built or written: the config of a
new run, or a resumed run's stored one after checking every option given again against it;
the FID snapshot settings, the only ones a resumed run may change; and the parameter counts,
which refuse a model that cannot fit in memory."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

import torch

from animegen import runs
from animegen.data.store import read_manifest
from animegen.errors import UserError
from animegen.models import registry
from animegen.settings import check_new_folder, check_value, limits_of
from animegen.training.config import Every, RunConfig, TrainConfig, make_config, resolve_precision
from animegen.training.objective import TrainContext
from animegen.training.snapshots import unset_counts


def plan_run(folder: runs.Run, request: dict, resume: bool, device_type: str) -> tuple[RunConfig, str, str | None]:
    """The run's config, how it starts ("new", "restart" or "resume") and a line saying so
    where the user may not expect it."""
    if folder.has_config():
        stored = folder.read_config()
        steps = folder.steps()
        if resume:
            config = _resume_config(folder, stored, request, device_type)
            return config, "resume", (None if steps else
                                      f"{folder} has no checkpoint yet: starting from step 0 with its config.json")
        if steps:
            raise UserError(f"{folder} already holds a run (newest checkpoint: step {steps[-1]}); continue it with "
                            "--resume or choose another --out.")
        return _new_config(request), "restart", f"{folder} stopped before its first checkpoint: starting it again"
    if folder.path.exists() and not folder.path.is_dir():
        raise UserError(f"{folder} is a file, not a run folder; choose another --out.")
    if not folder.path.exists():
        check_new_folder("--out", folder.path)
    foreign = folder.foreign_entries()
    if foreign:
        raise UserError(f"{folder} exists and is not a run folder (it holds {', '.join(foreign[:3])}); "
                        "choose another --out.")
    if resume and (request["model"] is None or request["data"] is None):
        raise UserError(f"{folder} holds no run to resume (no config.json); give MODEL and --data to start one.")
    return _new_config(request), "new", (f"{folder} holds no run yet: starting a new one" if resume else None)


def _new_config(request: dict) -> RunConfig:
    if request["model"] is None or request["data"] is None:
        raise UserError("a new run needs a MODEL and --data.")
    spec = registry.get(request["model"])
    manifest = read_manifest(request["data"])
    missing = [key for key in ("resolution", "content_hash") if key not in manifest]
    if missing:
        raise UserError(f"{request['data']}/manifest.json has no {' or '.join(missing)}; prepare the dataset again.")
    return make_config(spec, str(Path(request["data"]).resolve()), manifest["resolution"],
                       request["preset"] or "tiny", request["sets"], 0 if request["seed"] is None else request["seed"],
                       data_hash=manifest["content_hash"])


def _resume_config(folder: runs.Run, stored: dict, request: dict, device_type: str) -> RunConfig:
    """The stored config, after checking that every option given again equals the stored one
    and that the dataset still holds what the run trained on."""
    try:
        config = RunConfig.from_json(stored, registry.get(stored["model"]))
    except (KeyError, TypeError) as e:
        raise UserError(f"{folder.config_path} is not a complete run config (missing {e}).") from None
    # A config written before precision was a setting (or by an import) says "auto".
    config.train.precision = resolve_precision(config.train.precision, device_type)
    given = {"MODEL": (request["model"], config.model), "--preset": (request["preset"], config.preset),
             "--seed": (request["seed"], config.seed)}
    sections = (config.model_config, config.objective_config, config.train)
    for key, value in request["sets"].items():
        owner = next((s for s in sections if key in {f.name for f in dataclasses.fields(s)}), None)
        if owner is None:
            raise UserError(f"unknown setting {key!r}.")
        hint = typing.get_type_hints(type(owner))[key]
        given[f"--set {key}"] = (check_value(key, value, hint, limits_of(type(owner)).get(key)), getattr(owner, key))
    if request["init_from"] is not None:
        recorded = folder.read_init_from().get("checkpoint")
        given["--init-from"] = (str(runs.resolve_checkpoint(request["init_from"])), recorded)
    for name, (value, saved) in given.items():
        if value is not None and value != saved:
            raise UserError(f"{name} {value} differs from the run's {saved}; a resumed run keeps its settings "
                            "(start a new run to change them).")
    config.data = folder.dataset(stored, request["data"])
    config.data_hash = config.data_hash or read_manifest(config.data)["content_hash"]  # an import's first dataset
    return config


def set_snapshots(config: RunConfig, fid_every, fid_num, fid_real) -> dict[str, list]:
    """--fid-every / --fid-num / --fid-real: the only settings a resumed run may change;
    returns {setting: [old, new]} for each that changed (an interval that is off is null)."""
    hints, limits = typing.get_type_hints(TrainConfig), limits_of(TrainConfig)
    changes = {}
    for key, value in (("fid_every", fid_every), ("fid_num", fid_num), ("fid_real", fid_real)):
        if value is None:
            continue
        value = check_value(key, value, hints[key], limits[key], source="--" + key.replace("_", "-"))
        if key == "fid_every" and Every(value).off:
            value = None
        if value != getattr(config.train, key):
            changes[key] = [getattr(config.train, key), value]
            setattr(config.train, key, value)
    return changes


def resolved_config(config: RunConfig, device_type: str) -> dict:
    """config.json as the run will use it (`train --dry-run`): the values an objective
    computes for settings left unset (StyleGAN's r1_gamma), and the rule that chooses
    unset FID snapshot counts at the first snapshot (training.snapshots), in place of nulls."""
    shown = config.to_json()
    spec, meta = registry.get(config.model), torch.device("meta")
    with meta:
        objective = spec.objective(spec.model(config.model_config), config.objective_config, TrainContext(meta))
    shown["objective_config"].update(objective.resolved_settings(config.train.batch))
    train = shown["train"]
    if train["fid_every"] is not None:
        train.update({k: v for k, v in unset_counts(device_type).items() if train[k] is None})
    return shown


def parameter_counts(config: RunConfig) -> dict[str, int]:
    """Parameters of the Model and of each auxiliary net, counted on the meta device (nothing
    is allocated, so absurd sizes are caught before they exhaust memory)."""
    spec = registry.get(config.model)
    meta = torch.device("meta")
    with meta:
        model = spec.model(config.model_config)
        objective = spec.objective(model, config.objective_config, TrainContext(meta))
    nets = {"model": model, **objective.nets}
    return {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}


def check_fits(sizes: dict[str, int], device: torch.device, posthoc_copies: int = 0) -> None:
    """Refuse a model whose weights, EMA copies (the post-hoc ones too), gradients and Adam
    moments alone exceed memory."""
    need = 4 * ((5 + posthoc_copies) * sizes["model"] + 4 * sum(v for k, v in sizes.items() if k != "model"))
    have = (torch.cuda.mem_get_info(device)[1] if device.type == "cuda"
            else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    if need > have:
        raise UserError(f"this model needs at least {need / 2**30:.1f} GiB for its weights and optimizer states "
                        f"alone; {device} has {have / 2**30:.1f} GiB. Choose smaller widths.")
