"""The tensors of a training checkpoint: modules, optimizer states and random number
generators as flat {name: tensor} dicts (safetensors-ready) plus JSON layouts. The
checkpoint folders themselves (atomic writes, verification, last/best, pruning) belong to
animegen.runs.

    model.*, ema.*, net.<name>.*     module state dicts
    posthoc.<k>.*                    the post-hoc EMA of the k-th length of posthoc_ema (training.ema.PowerEMAs)
    optim.<name>.<index>.<key>       optimizer state tensors (the rest: JSON layout)
    rng.draws                        the state of the objective's generator of training randomness
"""

from __future__ import annotations

import torch


# ---------------------------------------------------------------- modules and optimizers
def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def modules_tensors(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The state dicts of {prefix: module} in one flat dict."""
    return {k: v for prefix, module in modules.items() for k, v in module_tensors(prefix, module).items()}


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
def rng_tensors(draws: torch.Generator) -> dict[str, torch.Tensor]:
    """The training randomness to save. Module-internal randomness (dropout) needs nothing:
    the loop seeds it from (seed, rank, step) before every step."""
    return {"rng.draws": draws.get_state()}


def load_rng(draws: torch.Generator, tensors: dict[str, torch.Tensor]) -> None:
    draws.set_state(tensors["rng.draws"] if "rng.draws" in tensors else tensors["rng.torch"])  # older checkpoints
