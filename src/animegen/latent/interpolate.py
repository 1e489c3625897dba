"""Interpolation videos and style-mixing figures.

Interpolation: each row of seeds gives keyframes, the latents `Model.draw` makes for those
seeds with the sampling options (so keyframe k is exactly `animegen sample --seed K --count 1`'s
image), and `frames` in-between frames per transition, back to the first seed with `loop`:
- StyleGAN2/3 in W (default): a cubic spline through the keyframes' W+ (as NVIDIA's
  gen_video.py); in z: z slerped between consecutive keyframes, then mapped (truncation,
  mixing) as `sample` maps it.
- StyleGAN2 with random noise: every noise map slerped between consecutive keyframes' maps.
- DCGAN, VAE, DDPM: z slerped (the DDPM's z is its initial noise, denoised by a
  deterministic sampler, so a frame is a function of z alone).
Edits (latent.directions) apply to every frame, after interpolation, as `sample` applies them.

Style mixing (StyleGAN only): a figure whose cell (row seed, column seed) is the row seed's
image with the style inputs of a layer range, and for StyleGAN2 those layers' noise maps,
taken from the column seed, as in NVIDIA's style_mixing.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from animegen.errors import UserError
from animegen.generate import MAX_GRID, check_batch_size, load_generator
from animegen.io import enlarge, image_grid, save_grid, shown_scale, to_uint8
from animegen.latent import codes
from animegen.latent.directions import Direction, apply_edits, edit_space, layer_range, load_all_directions, parse_edits
from animegen.latent.media import VIDEO_FORMATS, check_video_writer, write_video
from animegen.models import registry
from animegen.models.base import SEED_CONVENTIONS, Latents, Model, Noise
from animegen.settings import MAX_SEED, check_file_output, check_int

MAX_FRAMES = 1000  # in-between frames per keyframe transition
MAX_KEYFRAMES = 1000  # seeds in one row
MAX_ROWS = 64  # interpolations side by side; rows or columns of a style-mixing figure
MAX_VIDEO_FRAMES = 20000
MAX_BYTES = 2 * 2**30  # the frames of one output, all held in memory
MAX_FPS = 120.0
OUTPUTS = (".png", *VIDEO_FORMATS)


# ---------------------------------------------------------------- paths through latent space
def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from a[i] to b[i] (each flattened) at fraction t[i]: the
    direction moves along the great circle, the norm linearly. Gaussian latents of high
    dimension lie near a sphere; a straight line between two would cut inside it (norm down
    to ~0.7 of theirs midway), to latents the model rarely saw. t = 0 and 1 give a and b exactly."""
    shape, dtype, a, b = a.shape, a.dtype, a.flatten(1).double(), b.flatten(1).double()
    t = t.double().to(a.device)[:, None]
    norm_a, norm_b = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    unit_a, unit_b = a / norm_a.clamp_min(1e-12), b / norm_b.clamp_min(1e-12)
    angle = (unit_a * unit_b).sum(1, keepdim=True).clamp(-1, 1).acos()
    sin = angle.sin()
    parallel = sin < 1e-6  # (anti)parallel: any great circle; move straight instead
    weight_a = torch.where(parallel, 1 - t, ((1 - t) * angle).sin() / sin.clamp_min(1e-6))
    weight_b = torch.where(parallel, t, (t * angle).sin() / sin.clamp_min(1e-6))
    direction = weight_a * unit_a + weight_b * unit_b
    x = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12) * torch.lerp(norm_a, norm_b, t)
    x = torch.where(t == 0, a, torch.where(t == 1, b, x))
    return x.to(dtype).reshape(shape)


def spline_curvature(keys: torch.Tensor, loop: bool) -> torch.Tensor:
    """Second derivatives at the keyframes (at times 0, 1, ...) of the cubic spline through
    `keys` (K, ...): natural (zero at both ends), or periodic with `loop` (the path closes
    smoothly through the first keyframe again).

    An interpolating cubic spline rather than Catmull-Rom: it is C2 (no jolt of acceleration
    at a keyframe), as scipy's interp1d(kind="cubic") in NVIDIA's gen_video.py, whose tiling
    of the keyframes for a loop approximates the periodic spline solved here exactly. The cost,
    a K x K solve per row, is nothing beside rendering."""
    count, y = len(keys), keys.flatten(1).double()
    system = torch.zeros(count, count, dtype=torch.float64)
    rhs = torch.zeros_like(y)
    for i in range(count):
        if not loop and i in (0, count - 1):
            system[i, i] = 1.0  # natural end: no curvature
            continue
        before, after = (i - 1) % count, (i + 1) % count
        system[i, i] += 4.0
        system[i, before] += 1.0
        system[i, after] += 1.0
        rhs[i] = 6 * (y[before] - 2 * y[i] + y[after])
    return torch.linalg.solve(system.to(y.device), rhs)


def _segments(count: int, times: torch.Tensor, loop: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each time (in keyframes): the keyframes before and after it and the fraction between."""
    times = times.double()
    first = times.floor().long().clamp(0, count - 1 if loop else count - 2)
    fraction = times - first
    first = first % count
    return first, (first + 1) % count, fraction


def spline(keys: torch.Tensor, curvature: torch.Tensor, times: torch.Tensor, loop: bool) -> torch.Tensor:
    """The cubic spline through `keys` at `times` (keyframe k at time k); exactly keys[k] at k."""
    first, after, u = _segments(len(keys), times, loop)
    y, u, v = keys.flatten(1).double(), u[:, None].to(keys.device), 1 - u[:, None].to(keys.device)
    curvature = curvature.to(y.device)
    x = v * y[first] + u * y[after] + ((v**3 - v) * curvature[first] + (u**3 - u) * curvature[after]) / 6
    return x.to(keys.dtype).reshape(len(times), *keys.shape[1:])


def slerp_path(keys: torch.Tensor, times: torch.Tensor, loop: bool) -> torch.Tensor:
    """Slerp between consecutive keyframes of `keys` at `times`."""
    first, after, u = _segments(len(keys), times, loop)
    return slerp(keys[first], keys[after], u)


def frame_count(keyframes: int, frames: int, loop: bool) -> int:
    """Frames of a path: `frames` per transition, and the last keyframe unless it loops back."""
    return (keyframes * frames) if loop else (keyframes - 1) * frames + 1


class Interpolation:
    """The latents of every frame of one row of keyframes (`keys`, as `Model.draw` returns
    them) in `space`: "w" (a cubic spline through W+) or "z" (slerp of z)."""

    def __init__(self, keys: Latents, space: str, loop: bool):
        self.keys, self.space, self.loop = keys, space, loop
        self.curvature = spline_curvature(keys["w"], loop) if space == "w" else None

    def __len__(self) -> int:
        return len(self.keys["z"])

    def frame_times(self, frames: int) -> torch.Tensor:
        """`frames` times per transition, from the first keyframe to the last (or, looping, to
        just before the first again)."""
        return torch.arange(frame_count(len(self), frames, self.loop), dtype=torch.float64) / frames

    def at(self, times: torch.Tensor) -> Latents:
        """Explicit latents for `Model.draw(noise, given)` at `times` (in keyframes)."""
        if self.space == "w":
            given = {"w": spline(self.keys["w"], self.curvature, times, self.loop)}
        else:
            given = {"z": slerp_path(self.keys["z"], times, self.loop)}
        if "noise" in self.keys:
            given["noise"] = [slerp_path(m, times, self.loop) for m in self.keys["noise"]]
        return given

    def seeds_at(self, seeds: list[int], times: torch.Tensor) -> list[int]:
        """The seed of the keyframe each time starts from (what a frame's Noise is made of)."""
        return [seeds[i] for i in _segments(len(self), times, self.loop)[0].tolist()]


def interpolation_frames(model: Model, rows: list[list[int]], frames: int, loop: bool = False,
                         space: str | None = None, options: dict | None = None, batch_size: int = 32,
                         edits: list[tuple[Direction, float]] = (), seed_convention: str = "animegen",
                         given: Latents | None = None) -> np.ndarray:
    """uint8 frames (rows, T, R, R, 3): one interpolation per row of keyframe seeds.
    `options` are the model's resolved sample options; `given`: explicit latents of the
    keyframes of a single row (a latent file's), used instead of what the seeds draw."""
    options = options or {}
    space = check_space(model, space)
    check_deterministic(model, options)
    noise_source = SEED_CONVENTIONS[seed_convention]
    out = []
    for seeds in rows:
        path = Interpolation(draw_each(model, seeds, options, seed_convention, given), space, loop)
        times = path.frame_times(frames)
        shown = []
        for batch in frame_batches(len(times), frames, batch_size):
            with torch.no_grad():
                noise = noise_source(path.seeds_at(seeds, times[batch]), model.device)
                latents = apply_edits(model, model.draw(noise, path.at(times[batch]), **options), list(edits))
                shown.append(to_uint8(model.render(latents, noise, **options)))
        out.append(np.concatenate(shown))
    return np.stack(out)


def draw_each(model: Model, seeds: list[int], options: dict, seed_convention: str = "animegen",
              given: Latents | None = None) -> Latents:
    """The latents of `seeds` (with `given` ones in place of drawn ones), each drawn alone as
    `sample --count 1` draws it: floating-point results (the mapping network's, the
    synthesis') change in their last bits with the batch size."""
    noise_source = SEED_CONVENTIONS[seed_convention]
    with torch.no_grad():
        return codes.join_latents([model.draw(noise_source([s], model.device), codes.latent_rows(given, i, 1), **options)
                                   for i, s in enumerate(seeds)])


def frame_batches(count: int, frames: int, batch_size: int) -> Iterator[slice]:
    """The frames rendered together: every keyframe alone (so it is bit for bit `sample`'s
    image), the in-between frames `batch_size` at a time."""
    for key in range(0, count, frames):
        yield slice(key, key + 1)
        end = min(key + frames, count)
        for start in range(key + 1, end, batch_size):
            yield slice(start, min(start + batch_size, end))


def check_space(model: Model, space: str | None) -> str:
    """The space to interpolate in: "w" (StyleGAN's default) or "z"."""
    own = edit_space(model)
    if space is None:
        return own
    if space not in ("z", "w"):
        raise UserError(f"--space {space!r}: choose z or w.")
    if space not in model.capabilities.spaces:
        raise UserError(f"--space {space}: {registry.name_of(model)} has no {space} space; use --space z.")
    return space


def check_deterministic(model: Model, options: dict) -> None:
    """A frame must be a function of its latents: stochastic samplers draw fresh noise per frame."""
    if not model.deterministic(options):
        raise UserError(f"interpolation needs a deterministic sampler ({model.deterministic_hint}): "
                        "stochastic steps draw new noise for every frame.")


# ---------------------------------------------------------------- style mixing
def style_mix_figure(model: Model, row_seeds: list[int], col_seeds: list[int], layers: str = "coarse",
                     options: dict | None = None, batch_size: int = 32, seed_convention: str = "animegen") -> np.ndarray:
    """uint8 (rows+1, cols+1, R, R, 3): the column seeds' images across the top, the row seeds'
    down the left (the corner white), and in each cell the row seed's latents with the style
    inputs `layers` (latent.directions.layer_range) taken from the column seed. With StyleGAN2's
    random noise, the noise maps of those layers come from the column seed too, so "all" gives
    the column seed's image."""
    options = options or {}
    if not model.capabilities.style_mixing:
        raise UserError(f"style mixing needs a W space with style inputs: "
                        f"{', '.join(registry.families_that(lambda c: c.style_mixing))} have one; "
                        f"this run is {registry.name_of(model)}.")
    if "mix_seed" in options:
        raise UserError("style-mix takes the mixed styles from --cols; drop --mix-seed and --mix-layer.")
    first, last = layer_range(model, layers)
    seeds, n, m = [*row_seeds, *col_seeds], len(row_seeds), len(col_seeds)
    drawn = draw_each(model, seeds, options, seed_convention)
    heads = _render(model, drawn, 1, options)  # each alone: exactly `sample`'s images
    mixed = _render(model, _mixed(_slice(drawn, 0, n), _slice(drawn, n, None), first, last), batch_size, options)
    figure = np.full((n + 1, m + 1, *heads.shape[1:]), 255, np.uint8)
    figure[0, 1:], figure[1:, 0] = heads[n:], heads[:n]
    figure[1:, 1:] = mixed.reshape(n, m, *heads.shape[1:])
    return figure


def _slice(latents: Latents, start: int, count: int | None) -> Latents:
    end = None if count is None else start + count
    return {k: [m[start:end] for m in v] if isinstance(v, list) else v[start:end] for k, v in latents.items()}


def _mixed(rows: Latents, cols: Latents, first: int, last: int) -> Latents:
    """Every (row, column) pair, row-major: the row's latents with layers first..last from the column."""
    n, m = len(rows["w"]), len(cols["w"])
    pair = lambda r, c: (r.repeat_interleave(m, 0), c.repeat(n, *[1] * (c.ndim - 1)))  # noqa: E731
    w_row, w_col = pair(rows["w"], cols["w"])
    w = w_row.clone()
    w[:, first : last + 1] = w_col[:, first : last + 1]
    cells = {"z": rows["z"].repeat_interleave(m, 0), "w": w}
    if "noise" in rows:  # noise map i feeds the convolution that style input i feeds
        cells["noise"] = [pair(r, c)[1 if first <= i <= last else 0] for i, (r, c) in
                          enumerate(zip(rows["noise"], cols["noise"]))]
    return cells


def _render(model: Model, latents: Latents, batch_size: int, options: dict) -> np.ndarray:
    """uint8 images of StyleGAN latents (whose `render` draws nothing from its Noise)."""
    out = []
    for start in range(0, len(latents["w"]), batch_size):
        part = _slice(latents, start, batch_size)
        with torch.no_grad():
            out.append(to_uint8(model.render(part, Noise([0] * len(part["w"]), model.device), **options)))
    return np.concatenate(out)


# ---------------------------------------------------------------- seeds, checks and files
def parse_seeds(text: str, option: str, least: int = 1, most: int = MAX_KEYFRAMES) -> list[int]:
    """"3,7,11" -> [3, 7, 11], each a valid seed, `least` to `most` of them."""
    parts = [p.strip() for p in str(text).strip().split(",")]
    if not all(re.fullmatch(r"\d+", p) for p in parts) or not least <= len(parts) <= most:
        raise UserError(f"{option} {text!r}: give {least} to {most} comma-separated seeds, e.g. 3,7,11.")
    seeds = [int(p) for p in parts]
    if max(seeds) > MAX_SEED:
        raise UserError(f"{option}: seeds must be in [0, {MAX_SEED}].")
    return seeds


def parse_seed_rows(text: str, option: str = "--seeds") -> list[list[int]]:
    """"1,2,3;4,5,6" -> one row of keyframe seeds per ";"-separated part, all equally long."""
    parts = str(text).split(";")
    if not 1 <= len(parts) <= MAX_ROWS:
        raise UserError(f"{option}: 1 to {MAX_ROWS} rows of seeds separated by ';'.")
    rows = [parse_seeds(p, option, least=2) for p in parts]
    if len({len(r) for r in rows}) > 1:
        raise UserError(f"{option} {text!r}: every row needs as many seeds (the rows play side by side).")
    return rows


def _check_output(out: str, rows: int, frames_per_row: int, resolution: int, fps: float) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUTS:
        raise UserError(f"--out {out}: write a .png (all frames in a grid), .gif or .mp4.")
    check_file_output("--out", out)
    if not (isinstance(fps, (int, float)) and 0 < fps <= MAX_FPS):  # also refuses NaN
        raise UserError(f"--fps must be a number above 0 and at most {MAX_FPS:g}, got {fps!r}.")
    if frames_per_row > MAX_VIDEO_FRAMES:
        raise UserError(f"{frames_per_row} frames per row is too many (at most {MAX_VIDEO_FRAMES}); "
                        "use fewer --frames or seeds.")
    if suffix == ".png" and rows * frames_per_row > MAX_GRID:
        raise UserError(f"a PNG of {rows * frames_per_row} frames is too large (at most {MAX_GRID}); "
                        "use fewer --frames or seeds, or write a .gif or .mp4.")
    size = rows * frames_per_row * resolution**2 * 3
    if size > MAX_BYTES:
        raise UserError(f"the frames would take {size / 2**30:.1f} GiB of memory (at most {MAX_BYTES / 2**30:g}); "
                        "use fewer --frames, seeds or rows.")
    check_video_writer(out)
    return suffix


def write_interpolation(run: str, out: str, seeds: str | None, frames: int = 30, loop: bool = False,
                        space: str | None = None, fps: float = 30.0, options: dict | None = None,
                        device: str = "auto", checkpoint: str | int = "last", batch_size: int = 32,
                        directions: list[str] = (), edits: list[str] = (), seed_convention: str = "animegen",
                        latents: tuple[str, list[str]] | None = None, scale: int | None = None,
                        resample: str = "nearest", guide: str | None = None) -> dict:
    """Interpolate between the keyframe seeds of each row of `seeds` ("3,7,11" or "1,2,3;4,5,6"),
    or through the latents of latent files (`latents`: kind "z" or "w" and the files, their rows
    in order: e.g. projected faces), and write `out`: a .png with one row of frames per
    interpolation, or a .gif / .mp4 whose every frame shows all the rows; each image enlarged
    `scale` times (by default to 128 px or more: io.shown_scale) with `resample`. `guide`: as
    generate.load_generator's."""
    if (seeds is None) == (latents is None):
        raise UserError("give the keyframes as --seeds or as latent files (--z / --w), one of them.")
    rows = parse_seed_rows(seeds) if seeds is not None else None
    check_int("--frames", frames, 1, MAX_FRAMES)
    check_batch_size(batch_size)
    model, state = load_generator(run, device, checkpoint=checkpoint, guide=guide)
    options = model.resolve_sample_options(options or {})
    space = check_space(model, space)
    given = None
    if latents is not None:
        kind, files = latents
        if kind == "w":
            codes.check_w_as_given(options)
            if space == "z":
                raise UserError("keyframes from --w are interpolated in W as given: drop --space z.")
        file = codes.join_files([codes.load_latents(path, kind, model) for path in files])
        if not 2 <= len(file) <= MAX_KEYFRAMES:
            raise UserError(f"the latent files hold {len(file)} keyframes; interpolation needs 2 to {MAX_KEYFRAMES}.")
        rows, given = [file.seeds], file.given
    count = frame_count(len(rows[0]), frames, loop)
    scale = shown_scale(model.resolution, scale, len(rows) * count)
    suffix = _check_output(out, len(rows), count, model.resolution * scale, fps)
    moves = parse_edits(list(edits), load_all_directions(directions, model), model)
    video = interpolation_frames(model, rows, frames, loop, space, options, batch_size, moves, seed_convention, given)
    if suffix == ".png":
        save_grid(video.reshape(-1, *video.shape[2:]), out, columns=count, scale=scale, resample=resample)
    else:
        write_video(out, video_frames(video, scale, resample), fps)
    return {"out": str(out), "rows": len(rows), "frames": count, "space": space, "checkpoint": state["checkpoint"],
            "sample_options": options, "size": model.resolution * scale}


def video_frames(video: np.ndarray, scale: int, resample: str = "nearest") -> list[np.ndarray]:
    """The frames of a video of interpolations (rows, T, R, R, 3): frame t shows every row's
    frame t side by side, each enlarged `scale` times."""
    pad = 2 if len(video) > 1 else 0
    return [image_grid(enlarge(video[:, t], scale, resample), pad=pad) for t in range(video.shape[1])]


def write_style_mix(run: str, out: str, rows: str, cols: str, layers: str = "coarse", options: dict | None = None,
                    device: str = "auto", checkpoint: str | int = "last", batch_size: int = 32,
                    seed_convention: str = "animegen", scale: int | None = None, resample: str = "nearest") -> dict:
    """Write the style-mixing figure (`style_mix_figure`) of seeds `rows` x `cols` as the PNG
    `out`, each image enlarged `scale` times (by default to 128 px or more: io.shown_scale)."""
    row_seeds, col_seeds = parse_seeds(rows, "--rows", most=MAX_ROWS), parse_seeds(cols, "--cols", most=MAX_ROWS)
    check_batch_size(batch_size)
    if Path(out).suffix.lower() != ".png":
        raise UserError(f"--out {out}: the style-mixing figure is a .png.")
    check_file_output("--out", out)
    model, state = load_generator(run, device, checkpoint=checkpoint)
    options = model.resolve_sample_options(options or {})
    scale = shown_scale(model.resolution, scale, (len(row_seeds) + 1) * (len(col_seeds) + 1))
    figure = style_mix_figure(model, row_seeds, col_seeds, layers, options, batch_size, seed_convention)
    save_grid(figure.reshape(-1, *figure.shape[2:]), out, columns=len(col_seeds) + 1, scale=scale, resample=resample)
    return {"out": str(out), "rows": len(row_seeds), "cols": len(col_seeds), "layers": list(layer_range(model, layers)),
            "checkpoint": state["checkpoint"]}

