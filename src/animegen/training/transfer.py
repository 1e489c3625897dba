"""Transfer learning (`animegen train ... --init-from RUN_OR_CHECKPOINT`): a new run starts
from another run's weights instead of a random initialization, as in "Training GANs with
Limited Data" (Karras et al. 2020, sec. 4), even when that run trained on another dataset,
at another resolution or with another family.

Every tensor of the new run's model, EMA copy and auxiliary nets (e.g. the discriminator)
is taken from the source checkpoint when a tensor of the same name and shape is there;
the others keep their fresh initialization and are reported. Optimizer states, step counts
and the objective's statistics (e.g. ADA's p) start fresh.
"""

from __future__ import annotations

import os

import torch

from animegen import runs
from animegen.errors import UserError


def init_from(source: str | os.PathLike, modules: dict[str, torch.nn.Module]) -> dict:
    """Load matching tensors of `source` into `modules` ({checkpoint prefix: module}) and
    return a report: the source, how many tensors were loaded, and each skipped one with why."""
    tensors, state = runs.load_checkpoint(source)
    loaded, skipped = [], []
    for prefix, module in modules.items():
        matching = {}
        for name, own in module.state_dict().items():
            key = f"{prefix}.{name}"
            theirs = tensors.get(key)
            if theirs is None:
                skipped.append(f"{key} (not in the source)")
            elif theirs.shape != own.shape:
                skipped.append(f"{key} (shape {tuple(theirs.shape)} there, {tuple(own.shape)} here)")
            else:
                matching[name] = theirs
        module.load_state_dict(matching, strict=False)
        loaded += [f"{prefix}.{name}" for name in matching]
    if not loaded:
        raise UserError(f"no tensor of {state['checkpoint']} matches this model by name and shape; "
                        f"it cannot initialize it.")
    return {"checkpoint": state["checkpoint"], "model": state["model"], "step": state["step"],
            "loaded": len(loaded), "skipped": skipped}


def describe(report: dict) -> str:
    """One line for the log."""
    skipped = report["skipped"]
    shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    return (f"initialized from {report['checkpoint']} ({report['model']}, step {report['step']}): "
            f"{report['loaded']} tensors loaded, {len(skipped)} kept fresh" + (f" ({shown})" if skipped else ""))
