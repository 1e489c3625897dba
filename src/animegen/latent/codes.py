"""Latent files: the explicit latents behind images, saved and read back.

A latent file is a NumPy `.npz` (read without unpickling) holding, per image:
  z       (N, *z_shape)      the Gaussian latent each image draws first from its seed
                             (VAE and DCGAN z, StyleGAN z, the DDPM's initial noise x_T)
  w       (N, num_ws, w_dim) StyleGAN only: W+, one w per style input
  noise_K (N, 1, r, r)       StyleGAN2 with random noise: noise map K in synthesis order
  seeds   (N,)               the seeds they came from (what a stochastic sampler still draws)
  meta                       a JSON string: family, resolution, sample options
A plain `.npy` array is read as z or w (W (N, w_dim) is broadcast to every style input),
and NVIDIA's projector output (`projected_w.npz`, key "w") as w.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from animegen.errors import UserError
from animegen.io import atomic_write_bytes
from animegen.models import registry
from animegen.models.base import Latents, Model
from animegen.settings import MAX_SEED

KINDS = ("z", "w")
MAX_LATENTS = 65536  # images in one latent file


@dataclass
class LatentFile:
    """What a latent file gives: `given` (explicit latents, tensors on the CPU), the seeds it
    recorded (None: not recorded) and its metadata."""

    given: Latents
    seeds: list[int] | None
    meta: dict

    def __len__(self) -> int:
        return len(next(v for v in self.given.values() if not isinstance(v, list)))


def check_w_as_given(options: dict) -> None:
    """A given w is rendered as it is: truncation and style mixing belong to drawing it."""
    if options.get("truncation", 1.0) != 1.0 or "mix_seed" in options:
        raise UserError("--w is used as given: truncate or mix when drawing it, not with --truncation/--mix-seed.")


def latent_rows(given: Latents | None, start: int, count: int) -> Latents | None:
    """Images start..start+count-1 of `given` (None stays None)."""
    if given is None:
        return None
    return {k: [m[start : start + count] for m in v] if isinstance(v, list) else v[start : start + count]
            for k, v in given.items()}


def join_latents(batches: list[Latents]) -> Latents:
    """The latents of consecutive batches as one."""
    joined = {k: torch.cat([b[k] for b in batches]) for k in KINDS if k in batches[0]}
    if "noise" in batches[0]:
        joined["noise"] = [torch.cat(maps) for maps in zip(*(b["noise"] for b in batches))]
    return joined


def join_files(files: list[LatentFile]) -> LatentFile:
    """Several latent files of one model as one, in order (seeds 0.. where one recorded none)."""
    given = join_latents([f.given for f in files])
    seeds = [s for f in files for s in (f.seeds or range(len(f)))]
    return LatentFile(given, seeds, files[0].meta)


def save_latents(path: str | os.PathLike, latents: Latents, seeds, model: Model, options: dict) -> Path:
    """Write `latents` (as `Model.draw` returns them) of images `seeds` to `path` atomically."""
    arrays = {k: latents[k].detach().cpu().float().numpy() for k in KINDS if k in latents}
    arrays.update({f"noise_{i}": m.detach().cpu().float().numpy() for i, m in enumerate(latents.get("noise", ()))})
    meta = {"family": registry.name_of(model), "resolution": model.resolution, "sample_options": _jsonable(options)}
    arrays.update(seeds=np.asarray(list(seeds), dtype=np.int64), meta=np.array(json.dumps(meta)))
    path = Path(path)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, **arrays)
    atomic_write_bytes(path, tmp.read_bytes())
    tmp.unlink()
    return path


def load_latents(path: str | os.PathLike, kind: str, model: Model) -> LatentFile:
    """The `kind` ("z" or "w") latents of file `path`, checked against `model`; with them, the
    file's noise maps and seeds when it has them. Any problem is one UserError line."""
    if kind not in KINDS:
        raise ValueError(kind)
    if kind not in model.capabilities.spaces:
        raise UserError(f"--{kind}: {registry.name_of(model)} has no {kind} space; use --z.")
    arrays = _read(path)
    name = Path(path).name
    meta = _meta(arrays, name, model)
    if kind not in arrays:
        raise UserError(f"{name} holds no {kind} latents (it has: {', '.join(sorted(arrays)) or 'nothing'}).")
    latent = _checked(arrays[kind], kind, name, model)
    given = {kind: latent}
    maps = sorted((k for k in arrays if k.startswith("noise_")), key=lambda k: int(k.split("_")[1]) if k[6:].isdigit() else -1)
    if maps:
        given["noise"] = _noise_maps([arrays[k] for k in maps], len(latent), name, model)
    seeds = arrays.get("seeds")
    if seeds is not None:
        seeds = _seeds(seeds, len(latent), name)
    return LatentFile(given, seeds, meta)


def _read(path) -> dict[str, np.ndarray]:
    name = Path(path).name
    try:
        if str(path).endswith(".npy"):
            return {"array": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                return {"array": data}
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise UserError(f"latent file {path} does not exist.") from None
    except IsADirectoryError:
        raise UserError(f"latent file {path} is a folder, not a .npy or .npz file.") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{name} is not a readable .npy or .npz latent file ({e}).") from None


def _meta(arrays: dict, name: str, model: Model) -> dict:
    if "array" in arrays:  # a plain array: the kind asked for
        arrays["z"] = arrays["w"] = arrays.pop("array")
        return {}
    raw = arrays.pop("meta", None)
    try:
        meta = json.loads(str(raw)) if raw is not None else {}
    except ValueError:
        raise UserError(f"{name}: its meta entry is not JSON.") from None
    family = meta.get("family") if isinstance(meta, dict) else None
    if family is not None and family != registry.name_of(model):
        raise UserError(f"{name} holds latents of a {family} model; this run is {registry.name_of(model)}.")
    if isinstance(meta, dict) and meta.get("resolution") not in (None, model.resolution):
        raise UserError(f"{name} holds latents of a {meta['resolution']} px model; this run is {model.resolution} px.")
    return meta if isinstance(meta, dict) else {}


def _checked(array: np.ndarray, kind: str, name: str, model: Model) -> torch.Tensor:
    if array.dtype.kind not in "fiu":
        raise UserError(f"{name}: {kind} must be numbers, not {array.dtype}.")
    if kind == "z":
        want = tuple(model.z_shape)
    else:
        want = (model.num_ws, model.w_dim)
        if array.ndim in (1, 2) and array.shape[-1] == want[1]:  # W: (w_dim,) or (N, w_dim), one w for every input
            array = np.repeat(array.reshape(-1, 1, want[1]), want[0], axis=1)
    if array.ndim == len(want):
        array = array[None]  # one image, without its batch axis
    if tuple(array.shape[1:]) != want:
        shown = "N x " + " x ".join(map(str, want))
        raise UserError(f"{name}: {kind} has shape {tuple(array.shape)}; this model needs {shown}"
                        + (" (or N x w_dim for W)" if kind == "w" else "") + ".")
    if not 1 <= len(array) <= MAX_LATENTS:
        raise UserError(f"{name}: {len(array)} latents; a file holds 1 to {MAX_LATENTS}.")
    if not np.isfinite(array).all():
        raise UserError(f"{name}: {kind} holds NaN or infinite values.")
    return torch.from_numpy(np.array(array, dtype=np.float32))


def _noise_maps(maps: list[np.ndarray], count: int, name: str, model: Model) -> list[torch.Tensor]:
    if not model.capabilities.noise_maps:
        raise UserError(f"{name} holds noise maps, which {registry.name_of(model)} does not use.")
    want = [(count, *shape) for shape in model.noise_shapes()]
    got = [tuple(m.shape) for m in maps]
    if got != want:
        raise UserError(f"{name}: noise maps of shapes {got}; this model needs {want}.")
    if not all(np.isfinite(m).all() for m in maps):
        raise UserError(f"{name}: a noise map holds NaN or infinite values.")
    return [torch.from_numpy(np.array(m, dtype=np.float32)) for m in maps]


def _seeds(seeds: np.ndarray, count: int, name: str) -> list[int]:
    if seeds.shape != (count,) or seeds.dtype.kind not in "iu" or not ((seeds >= 0) & (seeds <= MAX_SEED)).all():
        raise UserError(f"{name}: seeds must be {count} integers in [0, {MAX_SEED}].")
    return [int(s) for s in seeds]


def _jsonable(options: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
