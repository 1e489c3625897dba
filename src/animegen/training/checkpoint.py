"""Checkpoints: every tensor in one safetensors file, everything else in one JSON file.

    RUN/checkpoints/step-00001000/tensors.safetensors   model.*, ema.*, net.<name>.*,
                                                        optim.<name>.<index>.<key>, rng.*
    RUN/checkpoints/step-00001000/state.json            config, step, nimg, data position,
                                                        optimizer layout, snapshot metrics
    RUN/checkpoints/last -> step-...                    the newest (a symlink, swapped atomically)
    RUN/checkpoints/best -> step-...                    the lowest snapshot FID, when there is one

Each step folder is written under a temporary name and renamed into place, so a killed
run never leaves a half checkpoint; loading never unpickles.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from animegen.errors import UserError
from animegen.io import atomic_dir, atomic_write_json, read_json

FORMAT = "animegen-checkpoint/1"
TENSORS, STATE = "tensors.safetensors", "state.json"


# ---------------------------------------------------------------- folders
def save(run: str | os.PathLike, step: int, tensors: dict[str, torch.Tensor], state: dict, keep: int) -> Path:
    """Write checkpoint `step` atomically, point `last` (and `best`) at it, prune old ones."""
    folder = Path(run) / "checkpoints"
    final = folder / f"step-{step:08d}"
    with atomic_dir(final, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp / TENSORS))
        atomic_write_json(tmp / STATE, {"format": FORMAT, **state})
    _point(folder / "last", final.name)
    _prune(folder, keep)
    return final


def find(path: str | os.PathLike) -> Path:
    """The checkpoint folder meant by `path`: a run folder (its newest) or a checkpoint folder."""
    p = Path(path)
    for candidate in (p / "checkpoints" / "last", p):
        if (candidate / STATE).is_file() and (candidate / TENSORS).is_file():
            return candidate.resolve()
    raise UserError(f"{p} is neither a run folder with a checkpoint nor a checkpoint folder.")


def load(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    folder = find(path)
    state = read_json(folder / STATE)
    if state.get("format") != FORMAT:
        raise UserError(f"{folder} is not an {FORMAT} checkpoint.")
    return load_file(str(folder / TENSORS)), state


def _point(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _prune(folder: Path, keep: int) -> None:
    steps = sorted(folder.glob("step-*"))
    scored = [(read_json(s / STATE).get("snapshot", {}).get("fid"), s) for s in steps]
    scored = [(fid, s) for fid, s in scored if fid is not None]
    best = min(scored, key=lambda fs: fs[0])[1] if scored else None
    for s in steps[: max(len(steps) - keep, 0)]:
        if s != best:
            shutil.rmtree(s)
    if best is not None:
        _point(folder / "best", best.name)


# ---------------------------------------------------------------- modules and optimizers
def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module(prefix: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    start = len(prefix) + 1
    module.load_state_dict({k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}, strict=True)


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into tensors (`prefix.<param index>.<key>`) and a JSON layout."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    for group in sd["param_groups"]:
        if any(torch.is_tensor(v) for v in group.values()):
            raise ValueError(f"optimizer {prefix}: tensor-valued hyperparameters cannot be checkpointed as JSON")
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                   layout: dict) -> None:
    state: dict[int, dict] = {}
    for index, entry in layout["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            index, key = name[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in layout["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------- random number generators
def rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors


def load_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(sum(k.startswith("rng.cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
