"""Sampling from trained models: image i always comes from seed i (models.base.Noise), so a
seed gives the same image whatever the batch size. Used by `animegen sample`, `animegen
eval`, and the training loop's grids and FID snapshots.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from animegen import posthoc, runs
from animegen.devices import resolve_device
from animegen.errors import UserError
from animegen.io import atomic_dir, save_grid, shown_scale, to_uint8
from animegen.metrics import evaluate_generator
from animegen.models import registry
from animegen.latent import codes
from animegen.latent.plane import plane_latents
from animegen.latent.directions import Direction, apply_edits, load_all_directions, parse_edits
from animegen.models.base import SEED_CONVENTIONS, Latents, Model
from animegen.settings import MAX_SEED, build, check_file_output, check_int, check_new_folder

WEIGHTS = ("ema", "model")
MAX_COUNT = 10**8  # images one `sample` writes
MAX_GRID = 1024  # images in one grid PNG


def sample_batches(model: Model, seeds: Sequence[int], batch_size: int, options: dict | None = None,
                   seed_convention: str = "animegen", given: Latents | None = None,
                   edits: list[tuple[Direction, float]] = (), drawn: list | None = None) -> Iterator[torch.Tensor]:
    """Images for `seeds`, in order, `batch_size` at a time: float N x 3 x R x R in [-1, 1].
    `seed_convention` "nvlabs": a seed's latent is NVIDIA's (models.base.NvlabsNoise).
    `given`: explicit latents for all the seeds (latent.codes), used instead of drawn ones;
    `edits`: (direction, strength) pairs applied to every image; `drawn`: a list that
    receives each batch's latents, edited, as they were rendered."""
    noise_source, options = SEED_CONVENTIONS[seed_convention], options or {}
    seeds = list(seeds) if not isinstance(seeds, range) else seeds
    for start in range(0, len(seeds), batch_size):
        with torch.no_grad():
            noise = noise_source(seeds[start : start + batch_size], model.device)
            latents = model.draw(noise, codes.latent_rows(given, start, len(noise)), **options)
            latents = apply_edits(model, latents, list(edits))
            if drawn is not None:
                drawn.append(latents)
            yield model.render(latents, noise, **options)


def sample_grid(model: Model, seeds: Iterable[int], batch_size: int, options: dict | None = None) -> np.ndarray:
    """uint8 N x R x R x 3 images for `seeds`."""
    return np.concatenate([to_uint8(x) for x in sample_batches(model, seeds, batch_size, options)])


def load_generator(path: str | os.PathLike, device: torch.device | str = "cpu", weights: str = "ema",
                   checkpoint: str | int = "last", ema_length: float | None = None,
                   guide: str | os.PathLike | None = None) -> tuple[Model, dict]:
    """The Model of checkpoint `checkpoint` (last, best, a step, ema:LENGTH, or a folder's path)
    of run `path` (or of checkpoint folder `path`), in eval mode, and that checkpoint's state
    (config, step, nimg, snapshot, and "checkpoint": its folder). `ema_length`: instead, the
    EMA of that length synthesized in memory from the run's post-hoc snapshots. `guide`: a run
    (its last checkpoint) or a checkpoint folder of the same family and resolution whose EMA
    weights guide sampling (autoguidance, `Capabilities.guidance`); the state then says which
    ("guide")."""
    if weights not in WEIGHTS:
        raise UserError(f"unknown weights {weights!r}; choose ema or model.")
    if ema_length is not None and str(checkpoint) != "last":
        raise UserError("give --checkpoint or --ema-length, not both: a length is made from the post-hoc snapshots "
                        "up to the newest.")
    tensors, state = (runs.load_checkpoint(path, checkpoint) if ema_length is None
                      else posthoc.synthesized(path, ema_length))
    family = registry.model_class(state["model"])
    model = family(build(family.config_class, state["config"]["model_config"]))
    state_dict = runs.module_state(tensors, weights)
    if not state_dict:  # an EMA length synthesized by `animegen ema` holds the EMA alone
        raise UserError(f"{state.get('checkpoint', path)} holds no {weights} weights; it has "
                        f"{', '.join(sorted({k.split('.')[0] for k in tensors}))}.")
    model.load_state_dict(state_dict, strict=True)
    model = sampling_layout(model.to(resolve_device(device)).eval().requires_grad_(False))
    if guide is not None:
        guide_model, guide_state = load_generator(guide, device)
        if guide_state["model"] != state["model"]:
            raise UserError(f"--guide {guide} is a run of {guide_state['model']}: a guide must be a run of the same "
                            f"family ({state['model']}).")
        if guide_model.resolution != model.resolution:
            raise UserError(f"--guide {guide} makes {guide_model.resolution} px images: a guide must make images of "
                            f"the same resolution ({model.resolution} px).")
        model.set_guide(guide_model)
        state = {**state, "guide": {"checkpoint": guide_state["checkpoint"], "step": guide_state["step"],
                                    "kimg": guide_state["nimg"] / 1000}}
    return model, state


def sampling_layout(model: Model) -> Model:
    """`model` with NHWC weights where its family samples faster that way (Model.channels_last);
    training's EMA copy too, so that its grids are the images `sample` makes."""
    return model.to(memory_format=torch.channels_last) if model.channels_last else model


def check_seeds(seed: int, count: int, name: str = "--count") -> range:
    """Seeds seed..seed+count-1, all of them valid seeds."""
    check_int(name, count, 1, MAX_COUNT)
    if not 0 <= seed or seed + count - 1 > MAX_SEED:
        raise UserError(f"seeds {seed}..{seed + count - 1} are out of range: seeds must be in [0, {MAX_SEED}].")
    return range(seed, seed + count)


def check_batch_size(batch_size: int) -> int:
    return check_int("--batch-size", batch_size, 1, 65536)


@dataclass
class Steering:
    """What `write_samples` draws beyond seeds: a latent file to start from (`latents`: its
    kind "z" or "w" and path) or a point of the seed plane, directions files, edits "NAME=STRENGTH", and an edit strip
    (`strip`: a direction name rendered at each of `strengths`)."""

    latents: tuple[str, str] | None = None
    plane: tuple[float, float] | None = None  # a point of the seed plane (latent.plane)
    directions: Sequence[str] = ()
    edits: Sequence[str] = ()
    strip: str | None = None
    strengths: Sequence[float] = ()


def write_samples(run: str, out: str, count: int | None, seed: int = 0, batch_size: int = 64,
                  options: dict | None = None, grid: str | None = None, device: str = "auto",
                  checkpoint: str | int = "last", progress: bool = False, seed_convention: str = "animegen",
                  steering: Steering | None = None, save_latents: bool = False, npy: bool = False,
                  scale: int | None = None, resample: str = "nearest", guide: str | None = None) -> dict:
    """Write images of seeds seed..seed+count-1 (or of a latent file's latents) as
    OUT/seed<NNNNNN>.png, batch by batch as they are made (OUT appears only when complete),
    optionally all of them as one grid PNG (each image enlarged `scale` times, by default to
    128 px or more: io.shown_scale), their latents as OUT/latents.npz (`save_latents`) and
    their float values as OUT/seed<NNNNNN>.npy (`npy`). With an edit strip, every seed is
    written once per strength (seed<NNNNNN>-NAME<strength>.png) and the grid has a row per
    seed and a column per strength, labelled with it."""
    steering = steering or Steering()
    check_batch_size(batch_size)
    check_new_folder("--out", out)
    if grid:
        check_file_output("--grid", grid)
    model, state = load_generator(run, device, checkpoint=checkpoint, guide=guide)
    options = model.resolve_sample_options(options or {})
    if steering.plane is not None:
        if count not in (None, 1) or steering.latents:
            raise UserError("--plane makes one image: drop --count, --z and --w.")
        first, given = plane_latents(model, *steering.plane, options)
        seeds = [first]
    else:
        seeds, given = _seeds_and_latents(model, steering.latents, count, seed, options)
    variants = _variants(model, steering)
    total = len(seeds) * len(variants)
    if grid and total > MAX_GRID:
        raise UserError(f"a grid of {total} images is too large (at most {MAX_GRID}); drop --grid or sample fewer.")
    scale = shown_scale(model.resolution, scale, total if grid else 1)
    if save_latents and total > codes.MAX_LATENTS:
        raise UserError(f"--save-latents keeps at most {codes.MAX_LATENTS} images' latents; sample fewer.")
    shown, drawn = [], []
    with atomic_dir(out) as tmp, tqdm(total=total, unit="img", disable=not progress, leave=False) as bar:
        for suffix, edits, _ in variants:
            batches = sample_batches(model, seeds, batch_size, options, seed_convention, given, edits, drawn)
            for start, batch in zip(range(0, len(seeds), batch_size), batches):
                images = to_uint8(batch)
                for s, image, values in zip(seeds[start : start + batch_size], images, batch):
                    Image.fromarray(image).save(tmp / f"seed{s:06d}{suffix}.png")
                    if npy:
                        np.save(tmp / f"seed{s:06d}{suffix}.npy", values.cpu().numpy())
                if grid:
                    shown.append(images)
                bar.update(len(images))
        if save_latents:
            codes.save_latents(tmp / "latents.npz", codes.join_latents(drawn), list(seeds) * len(variants), model, options)
        if grid:
            images = np.concatenate(shown).reshape(len(variants), len(seeds), *shown[0].shape[1:])
            strip = len(variants) > 1
            save_grid(images.transpose(1, 0, 2, 3, 4).reshape(total, *shown[0].shape[1:]), grid,
                      columns=len(variants) if strip else None, scale=scale, resample=resample,
                      labels=[label for _, _, label in variants] if strip else None)
    first, last = seeds[0], seeds[-1]
    return {"out": str(out), "count": total, "seeds": [first, last], "checkpoint": state["checkpoint"],
            "step": state["step"], "sample_options": options, "seed_convention": seed_convention,
            **({"guide": state["guide"]} if guide else {}),
            **({"grid": str(grid)} if grid else {}), **({"latents": str(Path(out) / "latents.npz")} if save_latents else {})}


def _seeds_and_latents(model: Model, source: tuple[str, str] | None, count: int | None, seed: int,
                       options: dict) -> tuple[Sequence[int], Latents | None]:
    """The seeds to draw and the explicit latents replacing what they would draw."""
    if source is None:
        if count is None:
            raise UserError("--count is required unless the latents come from --z or --w.")
        return check_seeds(seed, count), None
    kind, path = source
    if kind == "w":
        codes.check_w_as_given(options)
    file = codes.load_latents(path, kind, model)
    if count is not None and count != len(file):
        raise UserError(f"--count {count}, but {Path(path).name} holds {len(file)} latents; drop --count.")
    return file.seeds or check_seeds(seed, len(file)), file.given


def _variants(model: Model, steering: Steering) -> list[tuple[str, list, str]]:
    """(file name suffix, edits, label) for each image made per seed: one, or one per strip strength."""
    directions = load_all_directions(steering.directions, model)
    edits = parse_edits(list(steering.edits), directions, model)
    if bool(steering.strip) != bool(steering.strengths):
        raise UserError("an edit strip needs both --edit NAME (without a strength) and --strengths.")
    if not steering.strip:
        return [("", edits, "")]
    strip = parse_edits([f"{steering.strip}=0"], directions, model)[0][0]
    return [(f"-{strip.name}{s:+g}", [*edits, (strip, s)], f"{strip.name} {s:+g}") for s in steering.strengths]


def evaluate_run(run: str, metrics: list[str], num: int, split: str = "test", options: dict | None = None,
                 device: str = "auto", batch_size: int = 64, seed: int = 0, progress: bool = False,
                 record: bool = True, data: str | None = None, checkpoint: str | int = "last",
                 ema_length: float | None = None, echo=None, guide: str | None = None) -> dict:
    """Metrics of a run's EMA generator (or of its post-hoc EMA of length `ema_length`; guided by
    `guide`, see load_generator) against a split of its training dataset (or of `data`, a copy of
    it: same content hash), with the exact protocol that produced them, which names the EMA
    length (None: the ema_kimg EMA) and the guide.
    With `record`, also appended to RUN/metrics.jsonl as an "eval" event when `run` is a run
    folder, so the folder keeps every number it produced. Real features the cache lacks are
    announced through `echo` (default: on stderr with `progress`)."""
    seeds = check_seeds(seed, num, "--num")
    check_batch_size(batch_size)
    dev = resolve_device(device)
    model, state = load_generator(run, dev, checkpoint=checkpoint, ema_length=ema_length, guide=guide)
    options = model.resolve_sample_options(options or {})
    real = runs.Run(run).dataset(state["config"], data)
    batches = sample_batches(model, seeds, batch_size, options)
    result = evaluate_generator(batches, real=real, split=split, metrics=tuple(metrics), num=num, device=dev,
                                batch_size=batch_size, generator=model, progress=progress, echo=echo)
    protocol = {"model": state["model"], "checkpoint": state["checkpoint"], "step": state["step"],
                "kimg": state["nimg"] / 1000, "weights": "ema", "ema_length": state.get("posthoc", {}).get("sigma_rel"),
                "images": num, "seeds": [seed, seed + num - 1], "real": real, "split": split, "sample_options": options,
                **({"posthoc": state["posthoc"]} if "posthoc" in state else {}),
                **({"guide": state["guide"]} if guide else {})}
    result = {**result, "protocol": protocol}
    folder = runs.Run(run)
    if record and folder.metrics.is_file():
        folder.append_metrics({"event": "eval", "step": state["step"], "kimg": protocol["kimg"], "time": time.time(),
                               **result})
    return result


def evaluate_ema_lengths(run: str, lengths, metrics: list[str], num: int, **options) -> list[dict]:
    """evaluate_run of each post-hoc EMA length (`eval --ema-length`); every length is checked
    against the run's snapshots before the first is measured or recorded."""
    posthoc.check_lengths(run, lengths, "--ema-length")
    return [evaluate_run(run, metrics, num, ema_length=length, **options) for length in lengths]
