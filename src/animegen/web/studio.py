"""What the web page asks for, done by the latent library: the loaded runs, their model
cards and directions, and requests validated and rendered into PNG bytes, each with the
`animegen sample` command that writes the same bytes. Nothing here knows about HTTP.

Every request value is checked here (the page is never trusted): unknown keys, types and
ranges are a UserError with one line, which the app returns as a 400.
"""

from __future__ import annotations

import io
import numbers
import re
import secrets
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from animegen.data.images import BadImage
from animegen.data.prepare import decode_large_enough
from animegen.errors import UserError
from animegen.generate import load_generator, sample_batches
from animegen.io import image_grid, shown_scale, to_uint8
from animegen.latent.directions import (NAMED_RANGES, Direction, check_name, edit_space, layer_range, load_directions,
                                       parse_edits, save_directions)
from animegen.latent.discover import fit_from_latents, sefa, seed_latents
from animegen.latent import codes
from animegen.latent.interpolate import check_deterministic, interpolation_frames, video_frames
from animegen.latent.media import gif_bytes
from animegen.latent.plane import check_point, plane_latents
from animegen.latent.project import project_files
from animegen.models import registry
from animegen.models.base import Model, Option
from animegen.runs import Run, describe_run
from animegen.settings import MAX_SEED, Limit, check_int
from animegen.web.workfolder import WORK_LIMIT, WorkFolder

# Caps for interactivity, tighter than the library's own limits (each named beside it); every
# sampling option's range is the model's own (`Model.option_specs`).
STUDIO_MAX_GRID = 16  # images per request (`sample --grid` takes up to generate.MAX_GRID)
STUDIO_MAX_STRENGTH = 10.0  # of an edit slider (--edit takes up to latent.directions.MAX_STRENGTH)
STUDIO_MAX_FRAMES = 60  # per interpolation strip (interpolate takes up to latent.interpolate.MAX_FRAMES)
STUDIO_MAX_LABELLED = 512  # seeds marked in one few-shot fit (directions fit takes latent.discover.MAX_LABEL_ROWS)
GIF_FPS = 12
SEFA_DIRECTIONS = 8  # computed on start for a run that no directions file fits
MAX_UPLOAD = 10 * 2**20  # bytes of one uploaded face
MAX_UPLOAD_PIXELS = 4096 * 4096  # of one uploaded face, read from its header: decoding one costs up to ~230 MB
MAX_DIRECTIONS = 64  # per run: fitting a new name beyond them is refused, so the directions file stays small
PROJECTION_ID = re.compile(r"^[0-9a-f]{16}$")
REQUEST_KEYS = {"run", "view", "seed", "count", "plane", "projection", "options", "edits"}


@dataclass
class LoadedRun:
    """One run the server was started with; the page names it by `index` only."""

    index: int
    path: str
    model: Model
    state: dict
    card: dict
    folder: Path  # the studio's files of this run
    directions_file: str  # all of `directions`, on disk, for the commands shown
    work: WorkFolder
    checkpoint: str = "last"  # which of the run's checkpoints is served (`--checkpoint`)
    directions: dict[str, Direction] = field(default_factory=dict)
    guide: str | None = None  # the run guiding this one (autoguidance, `--guide`)

    def checkpoint_flags(self) -> list[str]:
        """`--checkpoint X` for the commands shown, unless the newest is served."""
        return [] if self.checkpoint == "last" else ["--checkpoint", self.checkpoint]

    def guide_flags(self) -> list[str]:
        """`--guide GUIDE` for the commands shown, when a guide steers this run."""
        return ["--guide", self.work.shown(self.guide)] if self.guide else []

    def save_directions(self) -> None:
        save_directions(self.work.inside(self.directions_file), self.model, list(self.directions.values()))


class Studio:
    """The runs given to `animegen serve`, each loaded once."""

    def __init__(self, runs: list[str], directions_files: list[str] = (), device: str = "cpu",
                 work: str | Path = "animegen-studio", work_limit: int = WORK_LIMIT, checkpoint: str = "last",
                 guides: dict[str, str] | None = None):
        """`work`: where the studio keeps what it makes (each run's directions file, with the
        SeFa directions computed on start and the few-shot ones, and the uploads it projects),
        so every command it shows can be run as it is; at most `work_limit` bytes of it.
        `checkpoint`: which checkpoint of every run to serve (last, best, a step, ema:LENGTH).
        `guides`: run -> the run guiding it (autoguidance; its weight is then a control)."""
        if not runs:
            raise UserError("give at least one run to serve.")
        guides = guides or {}
        unknown = sorted(set(guides) - set(runs))
        if unknown:
            raise UserError(f"--guide names {', '.join(unknown)}, which is not among the runs served.")
        self.work, self.device, self.checkpoint = WorkFolder(work, work_limit), device, str(checkpoint)
        self.unused = {str(f): "" for f in directions_files}  # file -> why no run took it
        self.runs = [self._load(i, path, directions_files, device, guides.get(path)) for i, path in enumerate(runs)]
        if self.unused:
            file, why = next(iter(self.unused.items()))
            raise UserError(f"--directions {file} fits none of the runs: {why}")
        self.projections: dict[tuple[int, str], tuple[str, codes.LatentFile]] = {}  # (run, id) -> latents path, file

    def _load(self, index: int, path: str, directions_files, device: str, guide: str | None) -> LoadedRun:
        model, state = load_generator(path, device, checkpoint=self.checkpoint, guide=guide)
        info = describe_run(path)
        card = {key: info[key] for key in ("family", "preset", "best_fid")} | {"kimg": round(state["nimg"] / 1000, 3)}
        card |= {"dataset": dataset_name(Run(path).read_config()), "resolution": model.resolution}
        if guide:
            card["guide"] = f"{Path(guide).name} ({state['guide']['kimg']:g} kimg)"
        folder = self.work.root / f"{index}-{Path(path).resolve().name}"
        loaded = LoadedRun(index, str(Path(path).absolute()), model, state, card, folder,
                           str(folder / "directions.safetensors"), self.work, self.checkpoint,
                           guide=str(Path(guide).absolute()) if guide else None)
        for file in directions_files:
            try:
                loaded.directions.update(load_directions(file, model))
                self.unused.pop(str(file), None)
            except UserError as e:  # perhaps a file for another of the served runs
                if str(file) in self.unused:
                    self.unused[str(file)] = str(e)
        if not loaded.directions and model.capabilities.sefa:
            loaded.directions = {d.name: d for d in sefa(model, num=SEFA_DIRECTIONS, layers="all")}
        if loaded.directions:
            folder.mkdir(parents=True, exist_ok=True)
            loaded.save_directions()
        return loaded

    def run(self, index) -> LoadedRun:
        return self.runs[check_int("run", index, 0, len(self.runs) - 1)]

    def describe(self) -> list[dict]:
        """The page's view of every run: its card, the controls it takes and its directions."""
        return [{"index": r.index, "name": Path(r.path).name, "card": r.card, "controls": controls(r.model),
                 "directions": [describe_direction(d) for d in r.directions.values()]} for r in self.runs]

    def generate(self, request: dict) -> dict:
        """Images for a page request: {"images": [{"seed", "name", "png"}], "command"}."""
        unknown = set(request) - REQUEST_KEYS
        if unknown:
            raise UserError(f"unknown request field(s): {', '.join(sorted(unknown))}.")
        run = self.run(request.get("run"))
        model = run.model
        options = model.resolve_sample_options(sample_options(model, request.get("options") or {}))
        specs = edit_specs(run, request.get("edits") or {})
        edits = parse_edits(specs, run.directions, model)
        plane, projection = request.get("plane"), request.get("projection")
        if projection is not None:
            if plane is not None or "seed" in request:
                raise UserError("a projected face takes no seed or plane point.")
            path, file = self._projection(run, projection)
            seeds, given, target = file.seeds, file.given, [f"--{edit_space(model)}", path]
        elif plane is not None:
            x, y = _point(plane)
            seed, given = plane_latents(model, x, y, options)
            seeds, target = [seed], ["--plane", f"{x:g}", f"{y:g}"]
        else:
            seed = check_int("seed", request.get("seed", 0), 0, MAX_SEED)
            count = check_int("count", request.get("count", 1), 1, STUDIO_MAX_GRID)
            if seed + count - 1 > MAX_SEED:
                raise UserError(f"seeds {seed}..{seed + count - 1} are out of range: at most {MAX_SEED}.")
            seeds, given, target = list(range(seed, seed + count)), None, ["--seed", str(seed), "--count", str(count)]
        with torch.no_grad():
            batch = next(sample_batches(model, seeds, len(seeds), options, given=given, edits=edits))
        images = [{"seed": s, "name": f"seed{s:06d}.png", "png": png_bytes(image)}
                  for s, image in zip(seeds, to_uint8(batch))]
        return {"images": images, "command": command("sample", run, target + ["--out", "samples"], options, specs)}

    def project(self, index, data: bytes, progress=None) -> dict:
        """Project an uploaded face (the bytes of an image file) as `animegen project` does,
        keeping the decoded upload and the result under the run's studio folder."""
        run = self.run(index)
        if not 0 < len(data) <= MAX_UPLOAD:
            raise UserError(f"upload one image file of at most {MAX_UPLOAD // 2**20} MB.")
        try:
            pixels = decode_large_enough(data, run.model.resolution // 2, MAX_UPLOAD_PIXELS)
        except BadImage as e:
            raise UserError(f"the upload is not a usable image: {e}.") from None
        deleted = self.work.make_room()
        self.projections = {k: v for k, v in self.projections.items() if k[1] not in deleted}
        key = secrets.token_hex(8)
        uploads, out = run.folder / "uploads", self.work.inside(run.folder / "projections" / key)
        upload = self.work.inside(uploads / f"{key}.png")
        uploads.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(upload)  # lossless: `animegen project` on it sees these pixels
        report = project_files(run.path, [str(upload)], str(out), device=self.device, checkpoint=run.checkpoint,
                               progress=progress, guide=run.guide)
        latents = out / "latents.npz"
        self.projections[(run.index, key)] = (self.work.shown(latents),
                                              codes.load_latents(latents, edit_space(run.model), run.model))
        return {"projection": key, "psnr": report["mean_psnr"], "target": (out / "target-000.png").read_bytes(),
                "recon": (out / "recon-000.png").read_bytes(),
                "command": shlex.join(["animegen", "project", *map(self.work.shown, (run.path, upload)), "--out",
                                       self.work.shown(out), *run.checkpoint_flags(), *run.guide_flags()])}

    def _projection(self, run: LoadedRun, key) -> tuple[str, codes.LatentFile]:
        if not isinstance(key, str) or not PROJECTION_ID.match(key) or (run.index, key) not in self.projections:
            raise UserError("no such projected face for this run; upload it again.")
        return self.projections[(run.index, key)]

    def interpolate(self, request: dict) -> dict:
        """An interpolation strip between 2-8 seeds or 2-8 projected faces: {"strip": PNG,
        "gif": GIF, "command"}."""
        unknown = set(request) - {"run", "seeds", "projections", "frames", "options", "edits"}
        if unknown:
            raise UserError(f"unknown request field(s): {', '.join(sorted(unknown))}.")
        run = self.run(request.get("run"))
        frames = check_int("frames", request.get("frames", 12), 1, STUDIO_MAX_FRAMES)
        options = run.model.resolve_sample_options(sample_options(run.model, request.get("options") or {}))
        check_deterministic(run.model, options)
        specs = edit_specs(run, request.get("edits") or {})
        if "projections" in request:
            keys = request["projections"]
            if not isinstance(keys, list) or not 2 <= len(keys) <= 8:
                raise UserError("projections must be a list of 2 to 8 projected faces.")
            found = [self._projection(run, key) for key in keys]
            file = codes.join_files([f for _, f in found])
            seeds, given = file.seeds, file.given
            keyframes = [a for path, _ in found for a in (f"--{edit_space(run.model)}", path)]
        else:
            seeds, given = int_list(request.get("seeds"), "seeds", 2, 8), None
            keyframes = ["--seeds", ",".join(map(str, seeds))]
        video = interpolation_frames(run.model, [seeds], frames, options=options,
                                     edits=parse_edits(specs, run.directions, run.model), given=given)
        gif = gif_bytes(video_frames(video, shown_scale(run.model.resolution)), GIF_FPS)  # as the command's default
        target = [*keyframes, "--frames", str(frames), "--fps", str(GIF_FPS), "--out", "interpolation.gif"]
        return {"strip": png_bytes(image_grid(video[0], columns=video.shape[1])), "gif": gif,
                "frames": video.shape[1], "command": command("interpolate", run, target, options, specs)}

    def fit(self, request: dict) -> dict:
        """A direction fitted to the seeds the user marked ("has it" / "doesn't"), added to the
        run's sliders and saved to its directions file."""
        unknown = set(request) - {"run", "name", "positive", "negative"}
        if unknown:
            raise UserError(f"unknown request field(s): {', '.join(sorted(unknown))}.")
        run = self.run(request.get("run"))
        name = check_name(request.get("name") if isinstance(request.get("name"), str) else "")
        if name not in run.directions and len(run.directions) >= MAX_DIRECTIONS:
            raise UserError(f"this run has {MAX_DIRECTIONS} directions, the most it keeps; refit one of their names.")
        positive = int_list(request.get("positive"), "positive", 1, STUDIO_MAX_LABELLED)
        negative = int_list(request.get("negative"), "negative", 1, STUDIO_MAX_LABELLED)
        latents = seed_latents(run.model, positive + negative)
        labels = torch.tensor([1.0] * len(positive) + [0.0] * len(negative))
        direction = fit_from_latents(run.model, latents, labels, name)
        run.directions[name] = direction
        run.save_directions()
        return {"direction": describe_direction(direction), "file": self.work.shown(run.directions_file)}


def dataset_name(config: dict) -> str:
    """A run's dataset by its folder's name and content hash: where it lies is the server's business."""
    if config.get("data") is None:
        return "none (imported without --data)"
    return f"{Path(config['data']).name} (content hash {str(config.get('data_hash'))[:12]})"


def describe_direction(d: Direction) -> dict:
    return {"name": d.name, "method": d.method, "layers": d.layers, "scale": d.scale}


def edit_specs(run: LoadedRun, edits) -> list[str]:
    """The page's {name: strength} or {name: {"strength", "layers"}} as `--edit` values
    ("NAME=STRENGTH[@LAYERS]"), zero strengths left out; checked here and by parse_edits."""
    if not isinstance(edits, dict):
        raise UserError("edits must be an object {direction: strength}.")
    specs = []
    for name, value in edits.items():
        if name not in run.directions:
            raise UserError(f"no direction {name!r} for this run.")
        strength, layers = (value.get("strength"), value.get("layers")) if isinstance(value, dict) else (value, None)
        strength = _number(f"edit {name}", strength)
        if abs(strength) > STUDIO_MAX_STRENGTH:
            raise UserError(f"edit {name}: the strength must be in [-{STUDIO_MAX_STRENGTH:g}, {STUDIO_MAX_STRENGTH:g}].")
        if layers is not None:
            if not isinstance(layers, str):
                raise UserError(f"edit {name}: layers must be a range name such as coarse or 0-3.")
            layers = None if layer_range(run.model, layers) == run.directions[name].layers else layers
        if strength:
            specs.append(f"{name}={strength:g}" + (f"@{layers}" if layers else ""))
    return specs


def command(verb: str, run: LoadedRun, target: list[str], options: dict, specs: list[str]) -> str:
    """The `animegen VERB` command line that makes exactly what the page shows."""
    args = ["animegen", verb, run.work.shown(run.path), *target, *run.model.option_flags(options),
            *run.checkpoint_flags(), *run.guide_flags()]
    if specs:
        args += ["--directions", run.work.shown(run.directions_file), *[a for spec in specs for a in ("--edit", spec)]]
    return " ".join(shlex.quote(a) for a in args)


def int_list(value, name: str, least: int, most: int) -> list[int]:
    if not isinstance(value, list) or not least <= len(value) <= most:
        raise UserError(f"{name} must be a list of {least} to {most} seeds.")
    return [check_int(name, v, 0, MAX_SEED) for v in value]


def controls(model: Model) -> dict:
    """What the page builds its controls from: the model's sampling options (`Option.describe`),
    its edit space and style inputs, and the studio's caps."""
    return {"options": [o.describe() for o in model.option_specs()], "space": edit_space(model),
            "family": registry.name_of(model), "num_ws": model.num_ws, "layer_ranges": list(NAMED_RANGES),
            "max_grid": STUDIO_MAX_GRID,
            "max_strength": STUDIO_MAX_STRENGTH, "max_frames": STUDIO_MAX_FRAMES}


def sample_options(model: Model, given) -> dict:
    """The request's sample options, each of its option's JSON type; ranges are the model's
    own (resolve_sample_options)."""
    if not isinstance(given, dict):
        raise UserError("options must be an object.")
    specs = {o.name: o for o in model.option_specs()}
    unknown = set(given) - set(specs)
    if unknown:
        raise UserError(f"{registry.name_of(model)} takes no option(s) {', '.join(sorted(unknown))}; "
                        f"it takes {', '.join(specs) or 'none'}.")
    return {name: _typed(specs[name], value) for name, value in given.items()}


def _typed(option: Option, value):
    if option.kind == "choice":
        if not isinstance(value, str):
            raise UserError(f"{option.name} must be a name.")
        return value
    if option.kind == "int":
        limit = option.limit or Limit()
        return check_int(option.name, value, int(limit.low if limit.low is not None else -MAX_SEED),
                         int(limit.high if limit.high is not None else MAX_SEED))
    if option.kind == "xy":
        if not isinstance(value, list) or len(value) != 2:
            raise UserError(f"{option.name} must be two numbers [x, y].")
        return tuple(_number(option.name, v) for v in value)
    return _number(option.name, value)


def _number(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise UserError(f"{key} must be a finite number, got {value!r}.")
    return float(value)


def _point(plane) -> tuple[float, float]:
    if not isinstance(plane, list) or len(plane) != 2:
        raise UserError("plane must be two numbers [x, y].")
    return check_point(_number("plane x", plane[0]), _number("plane y", plane[1]))


def png_bytes(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 HWC image, exactly as `animegen sample` writes its files."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
