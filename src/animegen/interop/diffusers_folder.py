"""A diffusion run as a diffusers folder, and a diffusers folder read back.

    DIR/model_index.json                   the pipeline and its parts (DDPMPipeline; families with one)
    DIR/unet/config.json                   the UNet2DModel's settings (interop.unet2d)
    DIR/unet/diffusion_pytorch_model.safetensors
    DIR/scheduler/scheduler_config.json    the noise process: DDPMScheduler, or an EDM scheduler
    DIR/animegen.json                      where it came from: family, run, checkpoint, step, dataset, FID
    DIR/README.md                          the model card, with the YAML header the Hugging Face Hub reads

A family that can leave this way declares `Capabilities.diffusers` and returns its `DiffusersForm`.
Reading takes safetensors only; a pickled checkpoint (.bin, .ckpt) is refused, never loaded.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from animegen.diffusion.schedule import linear_beta_range
from animegen.errors import UserError
from animegen.interop import unet2d
from animegen.io import atomic_dir, atomic_write_json
from animegen.models.unet import UNet

DIFFUSERS_VERSION = "0.42.1"  # the release whose format this writes, and that the tests load it with
WEIGHTS = "diffusion_pytorch_model.safetensors"
HALF_WEIGHTS = "diffusion_pytorch_model.fp16.safetensors"  # the Hub's fp16 variant, read when alone
PICKLES = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.ckpt", "diffusion_pytorch_model.pt", "model.ckpt")
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction"}  # ours -> diffusers' prediction_type
DIFFUSERS_BETAS = (1e-4, 0.02)  # diffusers' beta_start and beta_end when a config leaves them out
# Schedulers of the discrete variance-preserving process (betas over num_train_timesteps), whose
# config says all a ddpm run needs: the schedule and what the network predicts.
VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "PNDMScheduler",
                 "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                 "UniPCMultistepScheduler", "DEISMultistepScheduler", "LMSDiscreteScheduler")


@dataclass(frozen=True)
class DiffusersForm:
    """What diffusers needs to sample a model: the U-Net, the scheduler config (with its
    `_class_name`), the pipeline class (None: diffusers has none for it, the card gives the loop)
    and what the U-Net's time input is in the scheduler's timesteps (`timestep_scale` x them)."""

    unet: UNet
    scheduler: dict
    pipeline: str | None = None
    timestep_scale: float = 1.0


def ddpm_scheduler(schedule: str, timesteps: int, prediction: str) -> dict:
    """DDPMScheduler's config for our NoiseSchedule(schedule, timesteps): the same betas (linear:
    DDPM's range scaled to T; cosine: squaredcos_cap_v2), x0 clipped to [-1, 1] as our samplers
    clip it, and trailing timesteps, our samplers' spacing (equal when the steps divide T)."""
    start, end = linear_beta_range(timesteps)
    betas = ({"beta_schedule": "linear", "beta_start": start, "beta_end": end}
             if schedule == "linear" else {"beta_schedule": "squaredcos_cap_v2"})
    return {"_class_name": "DDPMScheduler", "num_train_timesteps": timesteps, **betas, "trained_betas": None,
            "prediction_type": PREDICTION_TYPES[prediction], "clip_sample": True, "clip_sample_range": 1.0,
            "thresholding": False, "variance_type": "fixed_small", "timestep_spacing": "trailing", "steps_offset": 0,
            "rescale_betas_zero_snr": False}


def edm_scheduler(sampler: str, sigma_data: float, sigma_min: float, sigma_max: float, rho: float) -> dict:
    """The EDM scheduler of our sampler: EDMEulerScheduler for euler, else (heun has no diffusers
    form) EDMDPMSolverMultistepScheduler, DPM-Solver++(2M) as ours. Their prediction_type
    "epsilon" is EDM's preconditioning: D = c_skip x + c_out F with c_out = sigma sigma_data /
    sqrt(sigma^2 + sigma_data^2)."""
    common = {"sigma_min": sigma_min, "sigma_max": sigma_max, "sigma_data": sigma_data, "sigma_schedule": "karras",
              "num_train_timesteps": 1000, "prediction_type": "epsilon", "rho": rho, "final_sigmas_type": "zero"}
    if sampler == "euler":
        return {"_class_name": "EDMEulerScheduler", **common}
    return {"_class_name": "EDMDPMSolverMultistepScheduler", **common, "solver_order": 2,
            "algorithm_type": "dpmsolver++", "solver_type": "midpoint", "lower_order_final": True,
            "euler_at_final": False, "thresholding": False}


def ddpm_settings(scheduler: dict) -> tuple[dict, list[str]]:
    """A VP scheduler config as our DDPM's (schedule, timesteps, prediction), and notes on where
    our samplers sample differently from that scheduler's settings. A UserError names the field
    of a process our NoiseSchedule cannot express."""
    name = scheduler.get("_class_name")
    if name not in VP_SCHEDULERS:
        raise UserError(f"_class_name: {name!r}; animegen imports models of the DDPM noise process, whose schedulers "
                        f"are {', '.join(VP_SCHEDULERS)}.")
    timesteps = scheduler.get("num_train_timesteps", 1000)
    if not isinstance(timesteps, int) or timesteps < 2:
        raise UserError(f"num_train_timesteps: {timesteps!r}; give a whole number of at least 2.")
    for key in ("trained_betas", "rescale_betas_zero_snr"):
        if scheduler.get(key):
            raise UserError(f"{key}: {scheduler[key]!r}; animegen's noise schedules are DDPM's linear and cosine.")
    kind = scheduler.get("beta_schedule", "linear")
    if kind == "linear":
        for key, ours, default in zip(("beta_start", "beta_end"), linear_beta_range(timesteps), DIFFUSERS_BETAS):
            given = scheduler.get(key, default)
            if not math.isclose(given, ours, rel_tol=1e-6):
                raise UserError(f"{key}: {given!r}; animegen's linear schedule over {timesteps} steps has "
                                f"{ours:g} (DDPM's 1e-4 .. 0.02 scaled to 1000 steps).")
    elif kind != "squaredcos_cap_v2":
        raise UserError(f"beta_schedule: {kind!r}; animegen's noise schedules are 'linear' and 'squaredcos_cap_v2'.")
    prediction = {v: k for k, v in PREDICTION_TYPES.items()}.get(scheduler.get("prediction_type", "epsilon"))
    if prediction is None:
        raise UserError(f"prediction_type: {scheduler['prediction_type']!r}; animegen's DDPM predicts "
                        f"{' or '.join(PREDICTION_TYPES.values())}.")
    notes = [f"{key} is {scheduler[key]!r} in the folder; animegen's samplers {what}" for key, normal, what in (
        ("clip_sample", True, "clip x0 to [-1, 1]"), ("thresholding", False, "clip x0 to [-1, 1], not threshold"),
        ("variance_type", "fixed_small", "use the posterior variance (fixed_small) for ancestral ddpm"))
        if key in scheduler and scheduler[key] != normal]
    return {"schedule": "linear" if kind == "linear" else "cosine", "timesteps": timesteps,
            "prediction": prediction}, notes


# ---------------------------------------------------------------- writing
def write_folder(out: str | os.PathLike, form: DiffusersForm, provenance: dict, card: str) -> Path:
    """The folder at `out`, complete or not at all."""
    with atomic_dir(out) as tmp:
        (tmp / "unet").mkdir()
        _write_config(tmp / "unet" / "config.json", unet2d.unet2d_config(form.unet.config))
        save_file(unet2d.to_diffusers(form.unet.state_dict()), str(tmp / "unet" / WEIGHTS), metadata={"format": "pt"})
        (tmp / "scheduler").mkdir()
        _write_config(tmp / "scheduler" / "scheduler_config.json", form.scheduler)
        if form.pipeline is not None:
            _write_config(tmp / "model_index.json", {"_class_name": form.pipeline,
                                                     "scheduler": ["diffusers", form.scheduler["_class_name"]],
                                                     "unet": ["diffusers", "UNet2DModel"]})
        atomic_write_json(tmp / "animegen.json", provenance)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return Path(out)


def _write_config(path: Path, config: dict) -> None:
    """A diffusers config: its class first, then the format's version, then the settings."""
    atomic_write_json(path, {"_class_name": config["_class_name"], "_diffusers_version": DIFFUSERS_VERSION,
                             **{k: v for k, v in config.items() if k != "_class_name"}})


# ---------------------------------------------------------------- reading
@dataclass(frozen=True)
class DiffusersFolder:
    unet_config: dict
    tensors: dict[str, torch.Tensor]
    scheduler: dict
    source: str


def read_folder(path: str | os.PathLike, scheduler_file: str | os.PathLike | None = None) -> DiffusersFolder:
    """A pipeline folder (model_index.json, unet/, scheduler/) or a UNet2DModel folder (config.json
    and the weights; the scheduler config beside them, in ../scheduler/ or `scheduler_file`)."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give a diffusers folder (model_index.json, unet/, scheduler/).")
    unet_dir = root / "unet" if (root / "unet").is_dir() else root
    weights = next((p for p in (unet_dir / WEIGHTS, unet_dir / HALF_WEIGHTS) if p.is_file()), unet_dir / WEIGHTS)
    if not (unet_dir / "config.json").is_file():
        raise UserError(f"{root} has no unet/config.json (nor config.json): not a diffusers UNet2DModel folder.")
    if not weights.is_file():
        pickled = [p.name for p in map(unet_dir.joinpath, PICKLES) if p.is_file()]
        if pickled:
            raise UserError(f"{unet_dir / pickled[0]} is a pickle, which animegen never loads (it can run code); "
                            "convert it once where you trust it: UNet2DModel.from_pretrained(DIR)."
                            "save_pretrained(OUT, safe_serialization=True).")
        sharded = (unet_dir / f"{WEIGHTS}.index.json").is_file()
        raise UserError(f"{unet_dir} has no {WEIGHTS}" + (" (sharded weights are not supported; save them as one "
                                                         "file)" if sharded else "") + ".")
    candidates = [Path(scheduler_file)] if scheduler_file is not None else [
        root / "scheduler" / "scheduler_config.json", unet_dir.parent / "scheduler" / "scheduler_config.json",
        unet_dir / "scheduler_config.json"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise UserError(f"no scheduler config at {candidates[0]}: the noise schedule is part of the model; "
                        "give it with --scheduler FILE.")
    return DiffusersFolder(_read_json(unet_dir / "config.json"), _read_weights(weights), _read_json(found), str(root))


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} holds no JSON object.")
    return value


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}).") from None
