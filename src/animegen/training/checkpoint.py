"""The tensors of a training checkpoint: modules, optimizer states and random number
generators as flat {name: tensor} dicts (safetensors-ready) plus JSON layouts. The
checkpoint folders themselves (atomic writes, verification, last/best, pruning) belong to
animegen.runs.

    model.*, ema.*, net.<name>.*     module state dicts
    optim.<name>.<index>.<key>       optimizer state tensors (the rest: JSON layout)
    rng.*                            torch CPU and CUDA generator states
"""

from __future__ import annotations

import torch


# ---------------------------------------------------------------- modules and optimizers
def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


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
