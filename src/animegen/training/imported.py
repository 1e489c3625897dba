"""A network made elsewhere as an ordinary run folder at step 0: config.json, a checkpoint written
by the training loop's own `save`, a sample grid. `animegen import` writes one from an NVIDIA
pickle (training.nvimport) or a diffusers folder (training.diffusers_import); sample, eval,
`train --resume` and `train --init-from` then take it like any run.

The architecture comes from the imported network (`fixed` settings, which --set may not
change); the hyperparameters from the preset and --set, as for a new run; the dataset is the one
the import will be fine-tuned and evaluated on, and must be at the network's resolution. Without
one, the run samples as it is, and `eval --data` / `train --resume --data` give it one later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from animegen import runs
from animegen.data.store import read_manifest
from animegen.errors import UserError
from animegen.generate import sample_grid
from animegen.io import remove_tree, save_grid
from animegen.models import registry
from animegen.training.config import RunConfig, make_config
from animegen.training.loop import Trainer
from animegen.training.objective import TrainContext


def imported_config(family: str, resolution: int, fixed: dict, data: str | os.PathLike | None, preset: str,
                    sets: dict, seed: int) -> RunConfig:
    """The run's config: the preset, `sets` (none of them a `fixed` setting), then `fixed`."""
    clash = sorted(set(sets) & set(fixed))
    if clash:
        raise UserError(f"--set {clash[0]}: the imported network's architecture fixes it "
                        f"({clash[0]}={fixed[clash[0]]!r}).")
    manifest = read_manifest(data) if data is not None else {"resolution": resolution}
    if manifest.get("resolution") != resolution:
        raise UserError(f"{data} is at {manifest.get('resolution')} px and the imported network at "
                        f"{resolution} px; prepare the data at {resolution} px.")
    path = str(Path(data).resolve()) if data is not None else None
    return make_config(registry.get(family), path, resolution, preset, {**fixed, **sets}, seed,
                       data_hash=manifest.get("content_hash"))


def write_imported_run(out: str | os.PathLike, config: RunConfig, load: Callable[[Trainer], None],
                       source: str | os.PathLike, kind: str, echo=print) -> Path:
    """The run folder `out` of `config`, its networks set by `load(trainer)`, recording where
    they came from (imported.json: `source`, a `kind` of file); returns its grid. The callers
    check `out` (check_new_folder) before they read their source; a failure midway leaves no folder."""
    folder = runs.Run(out)
    trainer = Trainer(folder, config, TrainContext(torch.device("cpu")), echo)
    load(trainer)
    folder.path.mkdir(parents=True)
    try:
        folder.write_config(config.to_json())
        folder.write_imported({"source": str(Path(source).resolve()), "kind": kind})
        trainer.save()
        grid = folder.grid(0)
        save_grid(sample_grid(trainer.ema, range(config.train.grid_seeds), batch_size=16), grid)
    except BaseException:
        remove_tree(folder.path)
        raise
    return grid
