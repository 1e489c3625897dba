"""`animegen import DIR --out RUN`: a diffusers UNet2DModel folder (and its scheduler config) as a
ddpm run at step 0 (training.imported), whose samplers then give the pipeline's images (DDIM with
eta 0 over the same steps). The U-Net's settings and the noise process come from the folder
(interop.unet2d, interop.diffusers_folder); anything our U-Net or NoiseSchedule cannot express is
refused in one line naming the field, before anything is written.
"""

from __future__ import annotations

import os

from animegen.interop import unet2d
from animegen.interop.diffusers_folder import ddpm_settings, read_folder
from animegen.models.unet import UNetConfig
from animegen.settings import check_new_folder
from animegen.training.imported import imported_config, write_imported_run
from animegen.training.loop import Trainer

FAMILY = "ddpm"


def import_folder(path: str | os.PathLike, out: str | os.PathLike, data: str | os.PathLike | None = None,
                  preset: str = "tiny", sets: dict | None = None, seed: int = 0,
                  scheduler: str | os.PathLike | None = None, echo=print) -> dict:
    check_new_folder("--out", out)
    folder = read_folder(path, scheduler)
    network = unet2d.unet_settings(folder.unet_config)
    process, notes = ddpm_settings(folder.scheduler)
    state = unet2d.from_diffusers(folder.tensors, UNetConfig(**network))
    resolution = network.pop("resolution")
    config = imported_config(FAMILY, resolution, {**network, **process}, data, preset, sets or {}, seed)

    def load(trainer: Trainer) -> None:
        for model in (trainer.model, trainer.ema):
            model.diffusers_form().unet.load_state_dict(state)

    for note in notes:
        echo(f"note: {note}")
    grid = write_imported_run(out, config, load, path, "diffusers folder", echo)
    return {"run": str(out), "model": FAMILY, "resolution": resolution, "grid": str(grid), **process}
