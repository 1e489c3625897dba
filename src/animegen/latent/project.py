"""Projection: the latents from which a run's generator reproduces given images. How, each
family declares (`Model.capabilities`):

  a W space    (StyleGAN2/3) Adam on w from the mean of 10k mapped z, in W (one w for every
               style input) or W+ (one per input), with NVIDIA's projector schedule
               (stylegan2-ada-pytorch projector.py): lr ramped up over the first 5% and down
               by a cosine over the last 25%, Gaussian noise on w of 0.05 w_std fading to 0
               (squared) at 75% of the steps. Noise maps (StyleGAN2's) are optimised too, per
               image, with the multi-scale autocorrelation penalty (weight 1e5) and
               renormalised after every step.
  "encoder"    (VAE) the encoder's posterior mean, refined by the same optimisation of z
               (steps 0: the encoder alone).
  "optimize"   (DCGAN) the same optimisation of z, from the best of zero and a few random draws.
  "ode"        (DDPM) the model's deterministic sampler run backwards (`Model.invert`: DDIM
               inversion) to the initial noise; `steps` is its number of steps, and the
               sampler with them samples the image back.

Every image is optimised independently (the loss is a sum of per-image losses and Adam acts
per element), so projecting images together or one at a time finds the same latents.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from animegen.data.images import BadImage, list_files, read_files
from animegen.data.prepare import decode_large_enough, square_resize
from animegen.errors import UserError
from animegen.generate import load_generator, sample_batches
from animegen.io import atomic_dir, to_uint8
from animegen.latent import codes
from animegen.latent.directions import edit_space, edit_vectors
from animegen.latent.perceptual import ProjectionLoss, parse_loss
from animegen.models import registry
from animegen.models.base import Latents, Model, Noise
from animegen.settings import MAX_SEED, check_int, check_new_folder

DEFAULT_STEPS = 300  # NVIDIA: 1000. 300: ~2 s per image for a tiny 32 px StyleGAN2 on one CPU thread
DEFAULT_LOSS = "pixel"  # the best PSNR, and the fastest (docs/results/latent.md)
MAX_STEPS = 100_000
MAX_IMAGES = 1024
W_SAMPLES = 10_000  # mapped z whose mean starts w and whose spread scales its noise
RANDOM_STARTS = 8  # DCGAN: random z tried besides zero
FRAME_EVERY = 10  # steps between the frames of --video
RENDER_BATCH = 64  # `animegen sample`'s default --batch-size: the same batches give the same bits


@dataclass(frozen=True)
class Schedule:
    """NVIDIA's projector schedule; `t` is the fraction of steps done."""

    steps: int = DEFAULT_STEPS
    lr: float = 0.1
    lr_rampdown: float = 0.25
    lr_rampup: float = 0.05
    noise_factor: float = 0.05
    noise_ramp: float = 0.75
    noise_weight: float = 1e5

    def lr_at(self, t: float) -> float:
        down = 0.5 - 0.5 * math.cos(min(1.0, (1 - t) / self.lr_rampdown) * math.pi)
        return self.lr * down * min(1.0, t / self.lr_rampup)

    def noise_at(self, t: float) -> float:
        return self.noise_factor * max(0.0, 1 - t / self.noise_ramp) ** 2


@dataclass
class Projection:
    """The latents found (as `Model.draw` gives them), the sample options that render them,
    and with `frames` the images every FRAME_EVERY steps (uint8 N x R x R x 3 each)."""

    latents: Latents
    options: dict
    frames: list[np.ndarray] = field(default_factory=list)


def spaces(model: Model) -> tuple[str, ...]:
    """The spaces `model` projects into, the default first."""
    return model.capabilities.projection_spaces


def inverted(model: Model) -> bool:
    """Whether the model is projected by running its sampler backwards (no loss, no optimisation)."""
    return model.capabilities.inversion == "ode"


def default_steps(model: Model) -> int:
    return model.inversion_steps()[0] if inverted(model) else DEFAULT_STEPS


def project(model: Model, targets: torch.Tensor, space: str, loss: ProjectionLoss | None, steps: int,
            seed: int = 0, frames: bool = False, progress: Callable[[float], None] | None = None) -> Projection:
    """Latents reproducing `targets` (N x 3 x R x R in [-1, 1]); image i's random numbers come
    from seed `seed + i`. `loss` is None only for a model inverted by its sampler.
    `progress(fraction)` is called as the optimisation goes."""
    noise = Noise(range(seed, seed + len(targets)), model.device)
    schedule = Schedule(steps)
    if inverted(model):
        latents, options = model.invert(targets, steps)
        return Projection(latents, options)
    options = model.resolve_sample_options({})
    with torch.no_grad():  # each seed's random noise maps, to start from
        maps = model.draw(noise).get("noise", []) if model.capabilities.noise_maps else []
    if space in ("w", "w+"):
        w_avg, spread = _w_statistics(model, seed)
        start = w_avg.expand(len(noise), 1 if space == "w" else model.num_ws, -1)

        def compose(value, maps):
            return {"w": value.expand(-1, model.num_ws, -1), **({"noise": maps} if maps else {})}
    else:
        if model.capabilities.inversion == "encoder":
            with torch.no_grad():
                start = model.encode(targets)[0]
        else:
            start = _best_start(model, noise, loss, seed)
        spread = math.sqrt(start[0].numel())  # z ~ N(0, I): the root of its total variance

        def compose(value, maps):
            return {"z": value, **({"noise": maps} if maps else {})}
    latents, shots = _descend(model, noise, loss, schedule, seed, start, spread, compose, maps, frames, progress)
    return Projection(latents, options, shots)


@torch.no_grad()
def _w_statistics(model, seed: int) -> tuple[torch.Tensor, float]:
    """Mean of W_SAMPLES mapped z, and the root of their total variance (NVIDIA's w_std)."""
    z = torch.randn(W_SAMPLES, *model.z_shape, generator=torch.Generator().manual_seed(seed)).to(model.device)
    w = model.map_z(z)[:, 0]
    w_avg = w.mean(0)
    return w_avg, (w - w_avg).square().sum(1).mean().sqrt().item()


@torch.no_grad()
def _best_start(model, noise, loss, seed: int) -> torch.Tensor:
    """Per image, the z of lowest loss among zero and RANDOM_STARTS draws."""
    draws = torch.randn(RANDOM_STARTS, len(noise), *model.z_shape, generator=torch.Generator().manual_seed(seed))
    candidates = torch.cat([torch.zeros_like(draws[:1]), draws]).to(model.device)
    losses = torch.stack([loss(model.render({"z": z}, noise)) for z in candidates])  # (starts, N)
    return candidates[losses.argmin(0), torch.arange(len(noise))]


def _descend(model: Model, noise: Noise, loss: ProjectionLoss, schedule: Schedule, seed: int, start: torch.Tensor,
             spread: float, compose: Callable, maps: Sequence[torch.Tensor] = (), frames: bool = False,
             progress: Callable[[float], None] | None = None):
    """Adam on `start` (and on noise maps `maps`) under `schedule`; `compose(value, maps)` gives
    the latents to render. Returns the final latents and the frames."""
    value = start.detach().clone().requires_grad_(True)
    maps = [m.detach().clone().requires_grad_(True) for m in maps]
    optimizer = torch.optim.Adam([value, *maps], lr=schedule.lr, betas=(0.9, 0.999))
    jitter = torch.Generator().manual_seed(seed)
    shots = []
    for step in range(schedule.steps):
        t = step / schedule.steps
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(t)
        wiggle = torch.randn(value.shape, generator=jitter).to(value) * (spread * schedule.noise_at(t))
        images = model.render(compose(value + wiggle, maps), noise)
        total = loss(images) + schedule.noise_weight * noise_regularization(maps)
        optimizer.zero_grad(set_to_none=True)
        total.sum().backward()
        optimizer.step()
        with torch.no_grad():
            for m in maps:
                m -= m.mean(dim=(1, 2, 3), keepdim=True)
                m *= m.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()
        if frames and step % FRAME_EVERY == 0:
            shots.append(to_uint8(images.detach()))
        if progress is not None:
            progress((step + 1) / schedule.steps)
    return compose(value.detach(), [m.detach() for m in maps]), shots


def noise_regularization(maps: Sequence[torch.Tensor]) -> torch.Tensor | float:
    """Per image: squared autocorrelation of each noise map at a one-pixel shift, both ways,
    at every scale down to 8 x 8 (NVIDIA's projector), summed."""
    total = 0.0
    for m in maps:
        while True:
            for dim in (2, 3):
                total = total + (m * torch.roll(m, shifts=1, dims=dim)).mean(dim=(1, 2, 3)).square()
            if m.shape[2] <= 8:
                break
            m = F.avg_pool2d(m, kernel_size=2)
    return total


# ---------------------------------------------------------------- files in, folder out
def read_targets(sources: Sequence[str], resolution: int) -> tuple[list[str], np.ndarray]:
    """Names and uint8 N x R x R x 3 images of the image files (or folders, zips) `sources`, each
    decoded, checked and cropped and resized exactly as `data prepare` does (center crop)."""
    files = list_files(sources)
    if not 1 <= len(files) <= MAX_IMAGES:
        raise UserError(f"{len(files)} files to project; give 1 to {MAX_IMAGES} images.")
    names, images = [], []
    for f, data in read_files(files):
        try:
            if isinstance(data, BadImage):
                raise data
            images.append(square_resize(decode_large_enough(data, resolution // 2), resolution, "center"))
        except BadImage as e:
            raise UserError(f"{f.label}: {e}; give image files (PNG, JPEG, WebP, ...).") from None
        names.append(f.label)
    return names, np.stack(images)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def check_request(model: Model, space: str | None, loss: str | None, steps: int | None, video: bool
                  ) -> tuple[str, str | None, int]:
    """The space, loss spec and steps to use, or one UserError saying what this family accepts."""
    family, accepted = registry.name_of(model), spaces(model)
    space = accepted[0] if space is None else space
    if space not in accepted:
        raise UserError(f"--space {space}: {family} projects into {' or '.join(accepted)}.")
    steps = default_steps(model) if steps is None else steps
    if inverted(model):
        if loss is not None or video:
            raise UserError(f"{family} is projected by {model.inversion_sampler} inversion, which has no --loss and no "
                            "optimisation to --video.")
        return space, None, check_int(f"--steps ({model.inversion_sampler} steps)", steps, 1, model.inversion_steps()[1])
    check_int("--steps", steps, 0 if model.capabilities.inversion == "encoder" else 1, MAX_STEPS)
    if video and steps == 0:
        raise UserError("--video shows the optimisation, and --steps 0 has none.")
    return space, DEFAULT_LOSS if loss is None else loss, steps


def project_latents(model: Model, sources: Sequence[str]) -> torch.Tensor:
    """(N, D): the edit-space latent (StyleGAN: one w, projected into W; others: z) of each image
    file, projected with the defaults (the pixel loss, DEFAULT_STEPS); for fitting directions."""
    targets = as_targets(read_targets(sources, model.resolution)[1], model.device)
    loss = None if inverted(model) else ProjectionLoss(parse_loss(DEFAULT_LOSS), targets)
    latents = project(model, targets, edit_space(model), loss, default_steps(model)).latents
    return edit_vectors(model, latents).detach().cpu()


def as_targets(images: np.ndarray, device) -> torch.Tensor:
    """uint8 N x R x R x 3 -> float N x 3 x R x R in [-1, 1] (the datasets' x / 127.5 - 1)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)


def project_files(run: str, sources: Sequence[str], out: str, space: str | None = None, loss: str | None = None,
                  steps: int | None = None, video: bool = False, seed: int = 0, device: str = "auto",
                  checkpoint: str | int = "last", progress: Callable[[float], None] | None = None,
                  guide: str | None = None) -> dict:
    """Project image files into `run`'s generator (guided by `guide`, as generate.load_generator's)
    and write OUT (atomically): target-NNN.png, recon-NNN.png, latents.npz (`animegen sample RUN
    --w/--z OUT/latents.npz` renders the reconstructions again, bit for bit), report.json and
    with `video` progress-NNN.gif."""
    check_new_folder("--out", out)
    check_int("--seed", seed, 0, MAX_SEED - MAX_IMAGES)
    model, state = load_generator(run, device, checkpoint=checkpoint, guide=guide)
    space, loss_spec, steps = check_request(model, space, loss, steps, video)
    names, images = read_targets(sources, model.resolution)
    targets = as_targets(images, model.device)
    loss_fn = ProjectionLoss(parse_loss(loss_spec), targets, run, checkpoint) if loss_spec is not None else None
    started = time.perf_counter()
    result = project(model, targets, space, loss_fn, steps, seed, video, progress)
    seconds = time.perf_counter() - started
    seeds = range(seed, seed + len(images))
    recon = torch.cat(list(sample_batches(model, seeds, RENDER_BATCH, result.options, given=result.latents)))
    final = loss_fn(recon).tolist() if loss_fn is not None else [None] * len(images)
    recon = to_uint8(recon)
    kind = edit_space(model)
    report = {"run": str(run), "checkpoint": state["checkpoint"], "family": registry.name_of(model), "space": space,
              "loss": loss_spec, "method": loss_spec or f"{model.inversion_sampler} inversion", "steps": steps, "seed": seed, "schedule": asdict(Schedule(steps)),
              "sample_options": result.options, "seconds": seconds,
              "reproduce": _sample_command(run, out, kind, result.options, model, guide),
              "images": [{"index": i, "source": name, "psnr": psnr(images[i], recon[i]), "loss": final[i]}
                         for i, name in enumerate(names)]}
    report["mean_psnr"] = float(np.mean([r["psnr"] for r in report["images"]]))
    with atomic_dir(out) as tmp:
        for i, (target, image) in enumerate(zip(images, recon)):
            Image.fromarray(target).save(tmp / f"target-{i:03d}.png")
            Image.fromarray(image).save(tmp / f"recon-{i:03d}.png")
            if video:
                _write_gif(tmp / f"progress-{i:03d}.gif", target, [frame[i] for frame in result.frames] + [image])
        saved = {k: v for k, v in result.latents.items() if k in (kind, "noise")}
        codes.save_latents(tmp / "latents.npz", saved, seeds, model, result.options)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return {**report, "out": str(out)}


def _sample_command(run, out, kind: str, options: dict, model: Model, guide: str | None) -> str:
    args = ["animegen", "sample", str(run), f"--{kind}", str(Path(out) / "latents.npz"), *model.option_flags(options),
            *(["--guide", str(guide)] if guide else []), "--out", "OUT"]
    return " ".join(shlex.quote(a) for a in args)


def _write_gif(path: Path, target: np.ndarray, frames: list[np.ndarray]) -> None:
    """Target beside each frame of the optimisation, the last frame held (Pillow)."""
    pictures = [Image.fromarray(np.concatenate([target, frame], axis=1)) for frame in frames]
    durations = [80] * (len(pictures) - 1) + [1500]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0)
