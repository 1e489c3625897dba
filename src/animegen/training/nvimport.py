"""`animegen import PKL --out RUN [--data DATA]`: an NVIDIA snapshot pickle as an ordinary run
folder at step 0 (training.imported). The architecture comes from the pickle (nvlabs.networks).
ADA's p is carried over, so fine-tuning continues with the augmentation strength the snapshot
had reached.
"""

from __future__ import annotations

import dataclasses
import os

from animegen.nvlabs.networks import Snapshot, import_snapshot
from animegen.settings import check_new_folder
from animegen.training.imported import imported_config, write_imported_run
from animegen.training.loop import Trainer


def import_run(pkl: str | os.PathLike, out: str | os.PathLike, data: str | os.PathLike | None = None,
               preset: str = "tiny",
               sets: dict | None = None, seed: int = 0, echo=print) -> dict:
    check_new_folder("--out", out)
    snapshot = import_snapshot(pkl)
    fixed = architecture_settings(snapshot)
    if snapshot.d is None:
        fixed = {k: v for k, v in fixed.items() if not k.startswith(("d_", "mbstd"))}
    config = imported_config(snapshot.family, snapshot.g.resolution, fixed, data, preset, sets or {}, seed)

    def load(trainer: Trainer) -> None:
        trainer.model.load_state_dict(snapshot.g.state_dict())
        trainer.ema.load_state_dict(snapshot.g_ema.state_dict())
        if snapshot.d is not None:
            trainer.objective.D.load_state_dict(snapshot.d.state_dict())
        if snapshot.ada_p is not None:
            trainer.objective.augment_pipe.p = snapshot.ada_p

    grid = write_imported_run(out, config, load, pkl, "NVIDIA snapshot pickle", echo)
    return {"run": str(out), "model": snapshot.family, "resolution": snapshot.g.resolution,
            "discriminator": snapshot.d is not None, "ada_p": snapshot.ada_p, "grid": str(grid)}


def architecture_settings(snapshot: Snapshot) -> dict:
    """The settings the pickle fixes: the generator's config and D's."""
    model = {k: v for k, v in dataclasses.asdict(snapshot.model_config).items() if k != "resolution"}
    return {**model, **{k: v for k, v in snapshot.d_settings.items() if k != "resolution"}}
