"""The run folder: its layout, its checkpoints and its lifecycle. Every command that reads or
writes a run (train, sample, eval, runs info, and the tools built on them) goes through here.

    RUN/config.json                       family, dataset (path, content hash, resolution), seed,
                                          every setting
    RUN/init_from.json                    where --init-from took its weights (new runs only)
    RUN/imported.json                     what `animegen import` made the run from (imported runs only)
    RUN/checkpoints/step-00001000/        tensors.safetensors + state.json (one checkpoint)
    RUN/checkpoints/last -> step-...      the newest (a symlink, swapped atomically)
    RUN/checkpoints/best -> step-...      the lowest snapshot FID, when there is one
    RUN/samples/step-00001000.png         grids from fixed seeds
    RUN/posthoc/step-00001000/            the post-hoc EMA profiles at that step (posthoc_ema; never pruned)
    RUN/ema/0.075/                        an EMA length synthesized from them by `animegen ema` (an ordinary
                                          checkpoint holding ema.* only; --checkpoint ema:0.075)
    RUN/metrics.jsonl                     one JSON object per line (train, fid, end, eval events)
    RUN/tb/                               TensorBoard events

Guarantees:
  * A checkpoint (and a post-hoc snapshot) is written under a temporary name and renamed into
    place; its state.json records the sha256 of its tensors file, so a garbled or truncated
    checkpoint is named as such, never loaded. Loading never unpickles.
  * What an interrupted write leaves (temporary folders, files and links) is removed when
    the run next starts, and never mistaken for a checkpoint.
  * One process trains a run at a time (an advisory lock on the folder).
  * On resume, log lines, TensorBoard events, grids and post-hoc snapshots from after the
    resumed step are dropped, so the history shows every step once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from animegen.data.store import read_manifest
from animegen.errors import UserError
from animegen.io import append_json_line, atomic_dir, atomic_write_bytes, atomic_write_json, read_json, remove_tree

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one trainer per run is then the user's care
    fcntl = None

FORMAT = "animegen-checkpoint/1"
POSTHOC_FORMAT = "animegen-posthoc/1"  # not a checkpoint: the profiles of one step, no generator to load
CONFIG, INIT_FROM, IMPORTED, METRICS = "config.json", "init_from.json", "imported.json", "metrics.jsonl"
CHECKPOINTS, SAMPLES, TENSORBOARD, POSTHOC, EMA = "checkpoints", "samples", "tb", "posthoc", "ema"
TENSORS, STATE = "tensors.safetensors", "state.json"
EMA_PREFIX = "ema:"  # --checkpoint ema:LENGTH names RUN/ema/LENGTH
DAMAGED = "damaged"  # checkpoints/damaged/: checkpoints a resume found unreadable and skipped
_STEP_NAME = re.compile(r"step-(\d{8,})(\.png)?")  # what Run.checkpoint and Run.grid name
TEMPORARY = re.compile(r"\..*\.tmp-.*")  # what io.atomic_* and the link swap name their temporaries


class CheckpointError(UserError):
    """A checkpoint that cannot be read; the message names the file and what is wrong."""


class Run:
    """One run folder. Cheap to make: nothing is read until asked."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config_path = self.path / CONFIG
        self.checkpoints = self.path / CHECKPOINTS
        self.samples = self.path / SAMPLES
        self.metrics = self.path / METRICS
        self.posthoc = self.path / POSTHOC
        self.ema = self.path / EMA

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------ config
    def has_config(self) -> bool:
        return self.config_path.is_file()

    def read_config(self) -> dict:
        try:
            config = read_json(self.config_path)
        except FileNotFoundError:
            raise UserError(f"{self.path} holds no run (no {CONFIG}).") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{self.config_path} is not valid JSON ({e}).") from None
        if not isinstance(config, dict) or "model" not in config:
            raise UserError(f"{self.config_path} is not an animegen run config.")
        return config

    def write_config(self, config: dict) -> None:
        atomic_write_json(self.config_path, config)

    def write_init_from(self, report: dict) -> None:
        atomic_write_json(self.path / INIT_FROM, report)

    def read_init_from(self) -> dict:
        """The --init-from record, or {} for a run that started fresh."""
        return self._read_record(INIT_FROM)

    def write_imported(self, record: dict) -> None:
        atomic_write_json(self.path / IMPORTED, record)

    def read_imported(self) -> dict:
        """What `animegen import` made the run from, or {} for a run trained here."""
        return self._read_record(IMPORTED)

    def _read_record(self, name: str) -> dict:
        try:
            return read_json(self.path / name)
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{self.path / name} is not valid JSON ({e}).") from None

    # ------------------------------------------------------------ checkpoints
    def steps(self) -> list[int]:
        """Steps of the checkpoint folders present, oldest first (temporaries excluded)."""
        return _steps_in(self.checkpoints)

    def checkpoint(self, step: int) -> Path:
        """The folder of the checkpoint of `step` (whether or not it exists)."""
        return self.checkpoints / _step_name(step)

    def grid(self, step: int) -> Path:
        """The sample grid of `step`."""
        return self.samples / f"{_step_name(step)}.png"

    def save_checkpoint(self, step: int, tensors: dict[str, torch.Tensor], state: dict, keep: int) -> Path:
        """Write checkpoint `step` atomically, point `last` (and `best`) at it, prune old ones;
        the one just written is never pruned."""
        if keep < 1:
            raise UserError(f"keep={keep}: at least the newest checkpoint must be kept.")
        final = self.checkpoint(step)
        write_checkpoint(final, tensors, state)
        _point(self.checkpoints / "last", final.name)
        self._prune(keep, step)
        return final

    def best_step(self, steps: list[int]) -> int | None:
        """The step of the lowest snapshot FID among `steps`, if any has one."""
        fids = {s: _snapshot_fid(self.checkpoint(s)) for s in steps}
        scored = {s: f for s, f in fids.items() if f is not None}
        return min(scored, key=scored.get) if scored else None

    def _prune(self, keep: int, newest: int) -> None:
        steps = self.steps()
        best = self.best_step(steps)
        kept = set(steps[-keep:]) | {newest, best}
        for s in steps:
            if s not in kept:
                remove_tree(self.checkpoint(s))
        if best is not None:
            _point(self.checkpoints / "best", _step_name(best))

    def load_newest_readable(self, set_aside: bool = True) -> tuple[dict[str, torch.Tensor], dict, list[str]]:
        """The newest checkpoint that reads back intact, and one line for each newer one that
        does not (what is wrong with it). Those are moved to checkpoints/damaged/, kept for a
        look but no longer counted by `keep` or taken for `last` (with `set_aside`: rank 0 alone
        moves them)."""
        problems = []
        for step in reversed(self.steps()):
            folder = self.checkpoint(step)
            try:
                tensors, state = read_checkpoint(folder)
            except CheckpointError as e:
                problems.append(f"{e} (moved to {DAMAGED}/)")
                continue
            for damaged in self.steps()[self.steps().index(step) + 1:] if set_aside else ():
                (self.checkpoints / DAMAGED).mkdir(exist_ok=True)
                os.replace(self.checkpoint(damaged), self.checkpoints / DAMAGED / _step_name(damaged))
            return tensors, state, problems
        raise CheckpointError(f"{self.path} has no readable checkpoint: " + "; ".join(problems))

    # ------------------------------------------------------------ post-hoc EMA
    def posthoc_steps(self) -> list[int]:
        """Steps of the post-hoc snapshots present, oldest first."""
        return _steps_in(self.posthoc)

    def posthoc_snapshot(self, step: int) -> Path:
        return self.posthoc / _step_name(step)

    def save_posthoc(self, step: int, tensors: dict[str, torch.Tensor], state: dict) -> None:
        """Write the post-hoc EMA profiles of `step` atomically. Never pruned: a synthesized
        length is a combination of all of them."""
        _write_verified(self.posthoc_snapshot(step), tensors, state, POSTHOC_FORMAT)

    def read_posthoc(self, step: int) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and state of the post-hoc snapshot of `step`, verified like a checkpoint."""
        return _read_verified(self.posthoc_snapshot(step), POSTHOC_FORMAT)

    def ema_checkpoint(self, length: float) -> Path:
        """The folder of the EMA of length `length` synthesized into the run (whether or not it exists)."""
        return self.ema / ema_name(length)

    def ema_lengths(self) -> list[str]:
        """The names of the EMA lengths synthesized into the run (RUN/ema/<name>)."""
        return sorted(p.name for p in self.ema.iterdir() if _holds_checkpoint(p)) if self.ema.is_dir() else []

    # ------------------------------------------------------------ lifecycle
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held while training: a second trainer of the same run stops with a clear line. The
        lock is the kernel's (flock on the folder), so a killed process never leaves it held.
        A folder made here and still empty when the block fails is removed again."""
        made = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise UserError(f"{self.path} is being trained by another process; wait for it or stop it.") \
                        from None
            yield
        except BaseException:
            if made and not any(self.path.iterdir()):
                self.path.rmdir()
            raise
        finally:
            os.close(fd)

    def foreign_entries(self) -> list[str]:
        """Names in the folder that are no part of a run's layout (nor temporaries): a folder
        holding any is not a run, and training refuses to write into it."""
        own = {CONFIG, INIT_FROM, IMPORTED, METRICS, CHECKPOINTS, SAMPLES, TENSORBOARD, POSTHOC, EMA}
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name not in own and not TEMPORARY.fullmatch(p.name))

    def remove_interrupted_writes(self) -> list[str]:
        """Delete what interrupted writes left (temporary folders, files, links) and links
        pointing nowhere; returns their names relative to the run folder."""
        removed = []
        for folder in (self.path, self.checkpoints, self.samples, self.posthoc, self.ema):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                dangling = p.is_symlink() and not p.exists()
                if TEMPORARY.fullmatch(p.name) or dangling:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                    removed.append(str(p.relative_to(self.path)))
        steps, last = self.steps(), self.checkpoints / "last"
        if steps and not (last.exists() and last.resolve().name == _step_name(steps[-1])):
            _point(last, _step_name(steps[-1]))  # killed between a checkpoint's rename and the link swap
        return sorted(removed)

    def forget_after(self, step: int) -> None:
        """Drop the log lines, grids and post-hoc snapshots written after `step` (by a run killed
        later), so a run resumed from `step` records each step once."""
        if self.metrics.is_file():
            lines = self.metrics.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = [line for line in lines if _step_of(line) <= step]
            if len(kept) != len(lines):
                atomic_write_bytes(self.metrics, "".join(kept).encode())
        if self.samples.is_dir():
            for p in self.samples.iterdir():
                m = _STEP_NAME.fullmatch(p.name)
                if m and m.group(2) and int(m.group(1)) > step:
                    p.unlink()
        for later in (s for s in self.posthoc_steps() if s > step):
            remove_tree(self.posthoc_snapshot(later))

    def append_metrics(self, entry: dict) -> None:
        append_json_line(self.metrics, entry)

    def read_metrics(self) -> list[dict]:
        """metrics.jsonl's events, oldest first; a line a kill cut short is left out."""
        if not self.metrics.is_file():
            return []
        events = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
        return [e for e in events if isinstance(e, dict)]

    def tensorboard(self, start_step: int):
        """A TensorBoard writer whose events from `start_step` on replace any written before
        (TensorBoard's purge_step), so a resumed run's curves show each step once."""
        from torch.utils.tensorboard import SummaryWriter  # heavy; loaded only when TensorBoard is on

        return SummaryWriter(str(self.path / TENSORBOARD), purge_step=start_step + 1)

    # ------------------------------------------------------------ dataset
    def dataset(self, config: dict, data: str | os.PathLike | None = None) -> str:
        """The run's dataset folder, checked to hold the content the run was trained on;
        `data` points at a moved copy (same content hash), or gives a run imported without a
        dataset one (then at the run's resolution)."""
        path = str(Path(data).resolve()) if data is not None else config["data"]
        if path is None:
            raise UserError(f"{self.path} has no dataset (it was imported without --data); pass --data DIR.")
        if not Path(path).exists():
            raise UserError(f"the run's dataset {path} is missing; pass --data to a copy of it.")
        manifest = read_manifest(path)
        expected = config.get("data_hash")
        if expected is not None and manifest.get("content_hash") != expected:
            raise UserError(f"{path} is not the dataset {self.path} was trained on: its content hash is "
                            f"{str(manifest.get('content_hash'))[:12]}, the run's {expected[:12]} (at "
                            f"{manifest.get('resolution')} px, the run's at {config.get('resolution', '?')} px); "
                            "it was prepared again or replaced. Pass --data to a copy of the original.")
        if manifest.get("resolution") != config.get("resolution", manifest.get("resolution")):
            raise UserError(f"{path} is at {manifest.get('resolution')} px and {self.path} at "
                            f"{config['resolution']} px; prepare the data at {config['resolution']} px.")
        return path


# ---------------------------------------------------------------- what a run holds
def describe_run(path: str | os.PathLike) -> dict:
    """`animegen runs info`: what a run folder holds, read without loading any tensor."""
    run = Run(path)
    config = run.read_config()
    states = {s: _read_state(run.checkpoint(s)) for s in run.steps()}
    readable = {s: st for s, st in states.items() if st is not None}
    newest = readable[max(readable)] if readable else {}
    fids = {s: st.get("snapshot", {}).get("fid") for s, st in readable.items()}
    scored = {s: f for s, f in fids.items() if f is not None}
    best = min(scored, key=scored.get) if scored else None
    return {
        "run": str(run.path), "family": config["model"], "preset": config.get("preset"),
        "dataset": _describe_dataset(run, config),
        "step": newest.get("step", 0), "kimg": round(newest.get("nimg", 0) / 1000, 3),
        "training_minutes": round(newest.get("train_seconds", 0) / 60, 2),
        "checkpoints": [f"step {s}" + (f"  FID {fids[s]:.2f}" if fids.get(s) is not None else "")
                        + ("" if states[s] is not None else "  (unreadable state.json)") for s in states],
        "best_fid": f"{scored[best]:.2f} at step {best}" if best is not None else "none (no FID snapshot)",
        "init_from": run.read_init_from().get("checkpoint", "none"),
        **({"imported_from": f"{imported['source']} ({imported['kind']})"} if (imported := run.read_imported()) else {}),
        "posthoc_ema": _describe_posthoc(run, config),
    }


def _read_state(folder: Path) -> dict | None:
    try:
        state = read_json(folder / STATE)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _describe_posthoc(run: Run, config: dict) -> str:
    profiles = config["train"].get("posthoc_ema")
    if not profiles:
        return "off"
    steps = run.posthoc_steps()
    stored = f"{len(steps)} snapshots (steps {steps[0]}..{steps[-1]})" if steps else "no snapshot yet"
    made = run.ema_lengths()
    return (f"profiles sigma_rel {', '.join(f'{s:g}' for s in profiles)}; {stored}"
            + (f"; synthesized: {', '.join(f'ema:{name}' for name in made)}" if made else ""))


def _describe_dataset(run: Run, config: dict) -> str:
    if config.get("data") is None:
        return "none yet (imported without --data)"
    try:
        run.dataset(config)
        status = "present, unchanged"
    except UserError as e:
        status = "missing" if "missing" in str(e) else "changed since training"
    resolution = config.get("resolution", config["model_config"].get("resolution"))
    return f"{config['data']} (content hash {str(config.get('data_hash'))[:12]}, {resolution} px; {status})"


# ---------------------------------------------------------------- reading checkpoints
def resolve_checkpoint(path: str | os.PathLike, which: str | int = "last") -> Path:
    """The checkpoint folder that --checkpoint names (last|best|STEP|ema:LENGTH|PATH): `which`
    (last, best, a step number, a synthesized EMA length) of run folder `path`, or `which`
    itself when it is a checkpoint folder's path, or `path` when it is one."""
    p, text = Path(path), str(which)
    if text not in ("last", "best") and not text.isdigit() and not text.startswith(EMA_PREFIX):
        folder = Path(text)
        if not _holds_checkpoint(folder):
            raise UserError(f"{folder} is not a checkpoint folder (no {STATE} or {TENSORS}); "
                            "--checkpoint takes last, best, a step number or a checkpoint folder.")
        return folder.resolve()
    if _holds_checkpoint(p):
        return p.resolve()
    if not (Run(p).has_config() or (p / CHECKPOINTS).is_dir()):
        raise UserError(f"{p} is neither a run folder nor a checkpoint folder.")
    return _run_checkpoint(Run(p), text)


def _run_checkpoint(run: Run, which: str) -> Path:
    """Checkpoint `which` (last, best, a step number, ema:LENGTH) of `run`."""
    if which.startswith(EMA_PREFIX):
        return _synthesized(run, which[len(EMA_PREFIX):])
    if which.isdigit():
        if not run.checkpoint(int(which)).is_dir():
            kept = ", ".join(map(str, run.steps())) or "none"
            raise UserError(f"{run} has no checkpoint of step {int(which)} (kept: {kept}).")
        return run.checkpoint(int(which))
    # From the step folders themselves, not the links: a copied run may hold stale copies of them.
    steps = run.steps()
    if which == "last":
        if not steps:
            raise UserError(f"{run} has no checkpoint yet.")
        return run.checkpoint(steps[-1])
    best = run.best_step(steps)
    if best is None:
        raise UserError(f"{run} has no best checkpoint (no FID snapshot ran).")
    return run.checkpoint(best)


def _synthesized(run: Run, length: str) -> Path:
    """The EMA of length `length` that `animegen ema` synthesized into `run`."""
    try:
        folder = run.ema_checkpoint(float(length))
    except ValueError:
        raise UserError(f"--checkpoint {EMA_PREFIX}{length}: {length!r} is not an EMA length (a number such as "
                        "0.075).") from None
    if not _holds_checkpoint(folder):
        made = ", ".join(run.ema_lengths()) or "none"
        raise UserError(f"{run} has no synthesized EMA of length {length} (made: {made}); make it with: "
                        f"animegen ema {run} --length {length}")
    return folder


def ema_name(length: float) -> str:
    """The folder name of a synthesized EMA length: the number as `--length` would give it (0.1, not 0.10)."""
    return f"{length:g}"


def _holds_checkpoint(folder: Path) -> bool:
    return (folder / STATE).is_file() or (folder / TENSORS).is_file()


def write_checkpoint(folder: str | os.PathLike, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """One checkpoint folder, written atomically (an existing one is replaced)."""
    _write_verified(Path(folder), tensors, state, FORMAT)


def read_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and state of one checkpoint folder, verified: a damaged file raises a
    CheckpointError naming it and what is wrong."""
    tensors, state = _read_verified(Path(folder), FORMAT)
    return tensors, {**state, "checkpoint": str(Path(folder).resolve())}


def _write_verified(final: Path, tensors: dict[str, torch.Tensor], state: dict, file_format: str) -> None:
    """Tensors and state (with the tensors file's sha256) as folder `final`, atomically."""
    # Copies: safetensors refuses tensors that share memory (e.g. a view kept by a module).
    data = save_safetensors({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
    with atomic_dir(final, overwrite=True) as tmp:
        atomic_write_bytes(tmp / TENSORS, data)
        atomic_write_json(tmp / STATE, {"format": file_format, "tensors_sha256": hashlib.sha256(data).hexdigest(),
                                        **state})


def _read_verified(folder: Path, file_format: str) -> tuple[dict[str, torch.Tensor], dict]:
    """What _write_verified wrote, checked against its format and sha256."""
    state_file, tensors_file = folder / STATE, folder / TENSORS
    try:
        state = read_json(state_file)
        data = tensors_file.read_bytes()
    except FileNotFoundError as e:
        raise CheckpointError(f"{e.filename} is missing.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{state_file} is damaged: not valid JSON ({e}).") from None
    if not isinstance(state, dict) or state.get("format") != file_format:
        raise CheckpointError(f"{state_file} is not an {file_format} file.")
    recorded = state.get("tensors_sha256")
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
        raise CheckpointError(f"{tensors_file} is damaged: its sha256 differs from the one recorded when it was "
                              f"written ({len(data)} bytes now).")
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(f"{tensors_file} is damaged: {e}.") from None
    return tensors, state


def load_checkpoint(path: str | os.PathLike, which: str | int = "last") -> tuple[dict[str, torch.Tensor], dict]:
    return read_checkpoint(resolve_checkpoint(path, which))


def module_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The state dict stored under `prefix.` (model, ema, net.<name>)."""
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


# ---------------------------------------------------------------- internals
def _steps_in(folder: Path) -> list[int]:
    """Steps of the step-N folders in `folder`, oldest first (temporaries and links excluded)."""
    if not folder.is_dir():
        return []
    found = (_STEP_NAME.fullmatch(p.name) for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    return sorted(int(m.group(1)) for m in found if m and not m.group(2))


def _step_name(step: int) -> str:
    return f"step-{step:08d}"


def _point(link: Path, target: str) -> None:
    """Make `link` point at `target` atomically (a new link renamed over the old)."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    if link.is_dir() and not link.is_symlink():  # a copy that followed the link (cp -L, a zip): a duplicate
        shutil.rmtree(link)
    os.replace(tmp, link)


def _snapshot_fid(folder: Path) -> float | None:
    state = _read_state(folder)  # a damaged checkpoint competes for nothing
    return state.get("snapshot", {}).get("fid") if state is not None else None


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")  # a line cut short by a kill
