"""Transfer learning (`animegen train ... --init-from RUN_OR_CHECKPOINT`): a new run starts
from another run's weights instead of a random initialization, as in "Training GANs with
Limited Data" (Karras et al. 2020, sec. 4), even when that run trained on another dataset,
at another resolution or with another family.

Every tensor of the new run's model, EMA copy and auxiliary nets (e.g. the discriminator)
is taken from the source checkpoint when a tensor of the same name and shape is there;
the others keep their fresh initialization and are reported. Optimizer states, step counts
and the objective's statistics (e.g. ADA's p) start fresh.

The source may also be an NVIDIA snapshot pickle, imported on the fly (nvlabs.networks; its
discriminator included). The blocks of a network that declares them indexed by resolution
(models.base.ResolutionBlocks: StyleGAN's discriminator) are matched by the resolution they
work at, not by their index, so that a source at another resolution lends each block the
weights of its counterpart.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from animegen import runs
from animegen.errors import UserError
from animegen.models.base import ResolutionBlocks
from animegen.nvlabs.networks import import_snapshot



def init_from(source: str | os.PathLike, modules: dict[str, torch.nn.Module]) -> dict:
    """Load matching tensors of `source` into `modules` ({checkpoint prefix: module}) and
    return a report: the source, how many tensors were loaded, and each skipped one with why."""
    tensors, state = _read_source(source)
    for prefix, module in modules.items():
        if isinstance(module, ResolutionBlocks):
            tensors = _blocks_by_resolution(tensors, prefix, len(module.blocks))
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


def _read_source(source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and state of a run or checkpoint, or of an NVIDIA pickle."""
    if Path(source).is_file() and Path(source).suffix == ".pkl":
        snapshot = import_snapshot(source)
        return snapshot.tensors(), {"checkpoint": str(Path(source).resolve()), "model": snapshot.family, "step": 0}
    return runs.load_checkpoint(source)


def _blocks_by_resolution(tensors: dict[str, torch.Tensor], prefix: str, target_blocks: int
                          ) -> dict[str, torch.Tensor]:
    """The tensors of blocks PREFIX.blocks.i renumbered so that each lands on the target's block
    of its resolution. Both networks end with their block at the same small resolution, so the
    numbers shift by the difference in block counts; source blocks above the target's
    resolution are dropped."""
    block = re.compile(re.escape(prefix) + r"\.blocks\.(\d+)\.(.+)")
    source_blocks = len({m[1] for key in tensors if (m := block.fullmatch(key))})
    shift = target_blocks - source_blocks
    renamed = {}
    for key, value in tensors.items():
        m = block.fullmatch(key)
        if m is None:
            renamed[key] = value
        elif int(m[1]) + shift >= 0:
            renamed[f"{prefix}.blocks.{int(m[1]) + shift}.{m[2]}"] = value
    return renamed


def describe(report: dict) -> str:
    """One line for the log."""
    skipped = report["skipped"]
    shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    return (f"initialized from {report['checkpoint']} ({report['model']}, step {report['step']}): "
            f"{report['loaded']} tensors loaded, {len(skipped)} kept fresh" + (f" ({shown})" if skipped else ""))
