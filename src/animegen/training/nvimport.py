"""`animegen import PKL --out RUN [--data DATA]`: an NVIDIA snapshot pickle as an ordinary run
folder at step 0 (config.json, a checkpoint written by the training loop's own `save`, a
sample grid), which sample, eval, `train --resume` and `train --init-from` accept.

The architecture comes from the pickle (nvlabs.networks); the hyperparameters from `preset`
and `sets`, as for a new run; the dataset is the one the import will be fine-tuned and
evaluated on, and must be at the network's resolution. Without one, the run samples as it
is, and `eval --data` / `train --resume --data` give it one later (the first becomes the
run's, recorded in config.json). ADA's p is carried over, so
fine-tuning continues with the augmentation strength the snapshot had reached.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from animegen import runs
from animegen.data.store import read_manifest
from animegen.errors import UserError
from animegen.generate import sample_grid
from animegen.io import save_grid
from animegen.models import registry
from animegen.nvlabs.networks import Snapshot, import_snapshot
from animegen.settings import check_new_folder
from animegen.training.config import make_config
from animegen.training.loop import Trainer
from animegen.training.objective import TrainContext


def import_run(pkl: str | os.PathLike, out: str | os.PathLike, data: str | os.PathLike | None = None,
               preset: str = "tiny",
               sets: dict | None = None, seed: int = 0, echo=print) -> dict:
    check_new_folder("--out", out)
    snapshot = import_snapshot(pkl)
    config = _config(snapshot, data, preset, sets or {}, seed)
    folder = runs.Run(out)
    trainer = Trainer(folder, config, TrainContext(torch.device("cpu")), echo)
    trainer.model.load_state_dict(snapshot.g.state_dict())
    trainer.ema.load_state_dict(snapshot.g_ema.state_dict())
    if snapshot.d is not None:
        trainer.objective.D.load_state_dict(snapshot.d.state_dict())
    if snapshot.ada_p is not None:
        trainer.objective.augment_pipe.p = snapshot.ada_p
    folder.path.mkdir(parents=True)
    folder.write_config(config.to_json())
    trainer.save()
    grid = folder.grid(0)
    save_grid(sample_grid(trainer.ema, range(config.train.grid_seeds), batch_size=16), grid)
    return {"run": str(folder), "model": snapshot.family, "resolution": snapshot.g.resolution,
            "discriminator": snapshot.d is not None, "ada_p": snapshot.ada_p, "grid": str(grid)}


def architecture_settings(snapshot: Snapshot) -> dict:
    """The settings the pickle fixes: the generator's config and D's."""
    model = {k: v for k, v in dataclasses.asdict(snapshot.model_config).items() if k != "resolution"}
    return {**model, **{k: v for k, v in snapshot.d_settings.items() if k != "resolution"}}


def _config(snapshot: Snapshot, data, preset: str, sets: dict, seed: int):
    fixed = architecture_settings(snapshot)
    clash = sorted(set(sets) & set(fixed))
    if clash:
        raise UserError(f"--set {clash[0]}: the imported network's architecture fixes it "
                        f"({clash[0]}={fixed[clash[0]]!r}).")
    manifest = read_manifest(data) if data is not None else {"resolution": snapshot.g.resolution}
    if manifest.get("resolution") != snapshot.g.resolution:
        raise UserError(f"{data} is at {manifest.get('resolution')} px and the imported network at "
                        f"{snapshot.g.resolution} px; prepare the data at {snapshot.g.resolution} px.")
    if snapshot.d is None:
        fixed = {k: v for k, v in fixed.items() if not k.startswith(("d_", "mbstd"))}
    path = str(Path(data).resolve()) if data is not None else None
    return make_config(registry.get(snapshot.family), path, snapshot.g.resolution, preset, {**fixed, **sets}, seed,
                       data_hash=manifest.get("content_hash"))
