"""The one training loop, for every family.

Per step: next batch -> objective.train_step -> EMA -> losses averaged over ranks and
checked (NaN/Inf stops the run without saving) -> then, when due: progress line and
scalars, sample grid, FID snapshot (kept with the checkpoint written at that step),
checkpoint. A run always ends with a checkpoint (also on Ctrl-C / SIGTERM, after the current step;
then without the final FID snapshot, so that stopping is quick).

The run folder describes itself:

    RUN/config.json        family, data, seed and every setting (written once)
    RUN/checkpoints/       see animegen.training.checkpoint
    RUN/samples/           step-XXXXXXXX.png grids from fixed seeds (EMA weights)
    RUN/metrics.jsonl      one JSON object per line: progress, fid snapshots, run ends (and
                           `animegen eval` results, "eval" events)
    RUN/tb/                TensorBoard scalars and sample grids
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import signal
import threading
import time
from pathlib import Path

import torch

from animegen.data.store import read_manifest
from animegen.errors import UserError
from animegen.generate import sample_batches, sample_grid
from animegen.io import append_json_line, atomic_write_bytes, atomic_write_json, image_grid, read_json, save_grid
from animegen.models import registry
from animegen.training import checkpoint, distributed, transfer
from animegen.training.config import Every, RunConfig, make_config
from animegen.training.data import TrainStream
from animegen.training.ema import ema_beta, make_ema, update_ema


SNAPSHOT_METRICS = ("fid", "kid", "pr")


class Target:
    """When to stop: a total number of steps, thousands of images, or minutes of training."""

    def __init__(self, steps: int | None = None, kimg: float | None = None, minutes: float | None = None):
        given = {k: v for k, v in (("steps", steps), ("kimg", kimg), ("minutes", minutes)) if v is not None}
        if len(given) != 1:
            raise UserError("give exactly one of --steps, --kimg and --minutes.")
        (self.unit, self.value), = given.items()
        if self.value <= 0:
            raise UserError(f"--{self.unit} must be positive.")

    def reached(self, clock: dict) -> bool:
        return clock[self.unit] >= self.value

    def describe(self) -> str:
        return f"{self.value:g} {self.unit}"


def train(run: str, *, model: str | None = None, data: str | None = None, preset: str | None = None,
          sets: dict | None = None, target: Target, resume: bool = False, device: str = "auto",
          seed: int | None = None, fid_every: str | None = None, fid_num: int | None = None,
          init_from: str | None = None, echo=print) -> dict:
    """Start (or with resume=True continue) the run in folder `run`; returns the end summary.
    A new run uses `preset` (default tiny), `sets` and `seed` (default 0), and starts from the
    weights of run or checkpoint `init_from` where names and shapes match (training.transfer);
    a resumed run keeps its config.json, except for the FID snapshot settings."""
    if resume and (preset is not None or sets or seed is not None or init_from is not None):
        raise UserError("a resumed run keeps its config.json; --preset, --set, --seed and --init-from apply to "
                        "new runs only.")
    ctx = distributed.setup(device)
    try:
        config = (_resume_config(run, model, data) if resume
                  else _new_config(run, model, data, preset or "tiny", sets or {}, seed or 0))
        if fid_every is not None:
            config.train.fid_every = fid_every
        if fid_num is not None:
            config.train.fid_num = fid_num
        trainer = Trainer(Path(run), config, ctx, echo)
        if resume:
            trainer.load(*checkpoint.load(run))
        elif init_from is not None:
            report = transfer.init_from(init_from, trainer.modules())
            trainer._log_line(transfer.describe(report))
        if not resume and ctx.rank == 0:
            atomic_write_json(Path(run) / "config.json", config.to_json())
            if init_from is not None:
                atomic_write_json(Path(run) / "init_from.json", report)
        distributed.barrier(ctx)
        return trainer.run(target)
    finally:
        distributed.teardown(ctx)


def _new_config(run, model, data, preset, sets, seed) -> RunConfig:
    if model is None or data is None:
        raise UserError("a new run needs a MODEL and --data.")
    if (Path(run) / "config.json").exists():
        raise UserError(f"{run} already holds a run; continue it with --resume or choose another --out.")
    resolution = read_manifest(data)["resolution"]
    return make_config(registry.get(model), str(Path(data).resolve()), resolution, preset, sets, seed)


def _resume_config(run, model, data) -> RunConfig:
    if not (Path(run) / "config.json").is_file():
        raise UserError(f"{run} holds no run to resume (no config.json).")
    saved = read_json(Path(run) / "config.json")
    if model is not None and model != saved["model"]:
        raise UserError(f"{run} trains {saved['model']}, not {model}.")
    config = RunConfig.from_json(saved, registry.get(saved["model"]))
    if data is not None and Path(data).resolve() != Path(config.data):
        if read_manifest(data)["content_hash"] != read_manifest(config.data)["content_hash"]:
            raise UserError(f"{data} is not the dataset {run} was trained on ({config.data}).")
        config.data = str(Path(data).resolve())
    return config


class Trainer:
    def __init__(self, run: Path, config: RunConfig, ctx, echo):
        self.run_dir, self.config, self.ctx, self.echo = run, config, ctx, echo
        self.spec = registry.get(config.model)
        self.tc = config.train
        self.every = {name: Every(getattr(self.tc, f"{name}_every")) for name in ("log", "sample", "ckpt", "fid")}
        if not self.every["fid"].off:
            from animegen.metrics import evaluate_generator  # fail before training, not at the first snapshot

            self._evaluate = evaluate_generator
        torch.manual_seed(config.seed)  # identical initialization and training randomness on every rank
        if ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = self.spec.model(config.model_config).to(ctx.device)
        self.ema = make_ema(self.model)
        self.objective = self.spec.objective(self.model, config.objective_config, ctx)
        self.stream = TrainStream(config.data, self.tc.batch, config.seed, self.tc.xflip, ctx.rank, ctx.world_size)
        self.step, self.nimg, self.seconds = 0, 0, 0.0
        self.saved_step = self.snapshot_step = self.grid_step = None
        self._writer = None
        self._stop = False

    # ------------------------------------------------------------ state
    @property
    def clock(self) -> dict:
        return {"steps": self.step, "kimg": self.nimg / 1000, "minutes": self.seconds / 60}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, "ema": self.ema, **{f"net.{k}": v for k, v in self.objective.nets.items()}}

    def load(self, tensors: dict, state: dict) -> None:
        for prefix, module in self.modules().items():
            checkpoint.load_module(prefix, module, tensors)
        for name, opt in self.objective.optimizers.items():
            checkpoint.load_optimizer(f"optim.{name}", opt, tensors, state["optimizers"][name])
        self.objective.load_extra_state(state["objective"])
        checkpoint.load_rng(tensors)
        self.stream.load_state(state["data"])
        self.step, self.nimg, self.seconds = state["step"], state["nimg"], state["train_seconds"]
        self.saved_step = self.grid_step = self.step
        self.snapshot_step = self.step if "snapshot" in state else None
        if self.ctx.rank == 0:
            _truncate_metrics(self.run_dir / "metrics.jsonl", self.step)

    def save(self, snapshot: dict | None = None) -> None:
        distributed.check_in_sync(self.ctx, self.modules().values())
        if self.ctx.rank == 0:
            tensors = {k: v for p, m in self.modules().items() for k, v in checkpoint.module_tensors(p, m).items()}
            layouts = {}
            for name, opt in self.objective.optimizers.items():
                opt_tensors, layouts[name] = checkpoint.optimizer_tensors(f"optim.{name}", opt)
                tensors.update(opt_tensors)
            tensors.update(checkpoint.rng_tensors())
            state = {"model": self.config.model, "config": self.config.to_json(), "step": self.step,
                     "nimg": self.nimg, "train_seconds": self.seconds, "data": self.stream.state(),
                     "optimizers": layouts, "objective": self.objective.extra_state(),
                     "world_size": self.ctx.world_size, **({"snapshot": snapshot} if snapshot else {})}
            checkpoint.save(self.run_dir, self.step, tensors, state, self.tc.keep)
        self.saved_step = self.step
        distributed.barrier(self.ctx)

    # ------------------------------------------------------------ the loop
    def run(self, target: Target) -> dict:
        start = dict(self.clock)
        self._log_line(f"{self.config.model} on {self.config.data} -> {self.run_dir} | {self.ctx.device}"
                       f" x{self.ctx.world_size} | from step {self.step} to {target.describe()}")
        window = dict(self.clock)
        with self._stop_on_signals():
            while not target.reached(self.clock) and not self._stop:
                before = dict(self.clock)
                losses = self._train_step()
                after = self.clock
                if self.every["log"].due(before, after):
                    self._progress(losses, window, target)
                    window = dict(after)
                if self.every["sample"].due(before, after):
                    self._grid()
                if self.every["fid"].due(before, after):
                    self._snapshot()
                elif self.every["ckpt"].due(before, after):
                    self.save()
        if not self.every["fid"].off and self.snapshot_step != self.step and not self._stop:
            self._snapshot()
        if self.saved_step != self.step:
            self.save()
        if self.grid_step != self.step:
            self._grid()
        return self._finish(start)

    def _train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        real = self.stream.next(self.ctx.device)
        losses = self.objective.train_step(real, self.step)
        self.step += 1
        self.nimg += self.tc.batch
        distributed.broadcast_buffers(self.ctx, [self.model, *self.objective.nets.values()])
        update_ema(self.ema, self.model, ema_beta(self.nimg, self.tc.batch, self.tc.ema_kimg, self.tc.ema_rampup))
        names = list(losses)
        values = torch.stack([losses[k].detach().float().reshape(()) for k in names]
                             + [torch.tensor(float(self._stop), device=self.ctx.device)])
        values = distributed.mean_over_ranks(self.ctx, values).tolist()  # .tolist() waits for the GPU
        self.seconds += time.perf_counter() - t0
        self._stop = values.pop() > 0
        losses = dict(zip(names, values))
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad:
            last = (f"{self.run_dir / 'checkpoints' / f'step-{self.saved_step:08d}'} (step {self.saved_step})"
                    if self.saved_step else "none")
            raise UserError(f"non-finite loss at step {self.step} ({', '.join(f'{k}={v}' for k, v in bad.items())}); "
                            f"training stopped without saving; last good checkpoint: {last}. "
                            "Lower the learning rate (--set lr=...).")
        return losses

    # ------------------------------------------------------------ outputs (rank 0)
    def _progress(self, losses: dict, window: dict, target: Target) -> None:
        seconds = (self.seconds - window["minutes"] * 60) or 1e-9
        rate = (self.nimg - window["kimg"] * 1000) / seconds
        remaining = _eta_seconds(target, self.clock, rate, self.tc.batch)
        text = "  ".join(f"{k} {v:.4g}" for k, v in losses.items())
        self._log_line(f"step {self.step:>7}  kimg {self.nimg / 1000:8.2f}  {rate:7.1f} img/s  {text}"
                       f"  ETA {_duration(remaining)}")
        self._record({"event": "train", "img_per_s": rate, "peak_mem_mb": _peak_memory_mb(self.ctx.device),
                      **losses}, {f"loss/{k}": v for k, v in losses.items()} | {"perf/img_per_s": rate})

    def _grid(self) -> None:
        self.grid_step = self.step
        if self.ctx.rank != 0:
            return
        with self._sampling_rng():
            grid = sample_grid(self.ema, range(self.tc.grid_seeds), batch_size=self._sample_batch)
        save_grid(grid, self.run_dir / "samples" / f"step-{self.step:08d}.png")
        if self.tc.tensorboard:
            self._tensorboard().add_image("samples", image_grid(grid), self.step, dataformats="HWC")

    def _snapshot(self) -> None:
        """FID (with KID and precision/recall, which come nearly free from the same Inception
        features) of the EMA weights, seeds 0..fid_num-1, vs the whole test split; written
        with the checkpoint of this step."""
        snapshot = None
        if self.ctx.rank == 0:
            t0 = time.perf_counter()
            options = self.ema.resolve_sample_options({})
            with self._sampling_rng():
                batches = sample_batches(self.ema, range(self.tc.fid_num), self._sample_batch, options)
                result = self._evaluate(batches, real=self.config.data, split="test", metrics=SNAPSHOT_METRICS,
                                        num=self.tc.fid_num, device=self.ctx.device, batch_size=self._sample_batch)
            numbers = {k: v for k, v in result.items() if isinstance(v, (int, float))}
            snapshot = {**numbers, "num": self.tc.fid_num, "split": "test", "sample_options": options}
            name = f"FID-{_count(self.tc.fid_num)}"
            self._log_line(f"step {self.step:>7}  {name} {result['fid']:.2f}  "
                           + "  ".join(f"{k} {numbers[k]:.4g}" for k in ("kid", "precision", "recall") if k in numbers)
                           + f"  ({time.perf_counter() - t0:.0f} s)")
            self._record({"event": "fid", **snapshot}, {f"metrics/{k}": numbers[k] for k in numbers
                                                        if not k.startswith("num")})
        self.snapshot_step = self.step
        self.save(snapshot)

    def _finish(self, start: dict) -> dict:
        seconds = self.seconds - start["minutes"] * 60
        summary = {"event": "end", "img_per_s": (self.nimg - start["kimg"] * 1000) / (seconds or 1e-9),
                   "peak_mem_mb": _peak_memory_mb(self.ctx.device), "stopped_early": self._stop,
                   "checkpoint": str(self.run_dir / "checkpoints" / f"step-{self.step:08d}")}
        self._record(summary, {})
        self._log_line(f"{'stopped' if self._stop else 'done'}: step {self.step}, {self.nimg / 1000:.2f} kimg, "
                       f"{self.seconds / 60:.1f} min of training, {summary['img_per_s']:.1f} img/s, "
                       f"peak memory {summary['peak_mem_mb']:.0f} MB; checkpoint {summary['checkpoint']}")
        if self._writer is not None:
            self._writer.close()
        return {"step": self.step, "kimg": self.nimg / 1000, "train_seconds": self.seconds, **summary}

    @property
    def _sample_batch(self) -> int:
        """Sampling needs no gradients, so it can take bigger batches than training."""
        return max(self.tc.batch, 64)

    def _log_line(self, line: str) -> None:
        if self.ctx.rank == 0:
            self.echo(line)

    def _record(self, entry: dict, scalars: dict) -> None:
        if self.ctx.rank != 0:
            return
        entry = {"step": self.step, "kimg": self.nimg / 1000, "train_seconds": round(self.seconds, 3),
                 "time": time.time(), **entry}
        append_json_line(self.run_dir / "metrics.jsonl", entry)
        for key, value in scalars.items() if self.tc.tensorboard else ():
            self._tensorboard().add_scalar(key, value, self.step)

    def _tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tb"))
        return self._writer

    def _sampling_rng(self):
        """Sampling on rank 0 must leave the training randomness untouched."""
        return torch.random.fork_rng(devices=[self.ctx.device] if self.ctx.device.type == "cuda" else [])

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """Ctrl-C / SIGTERM finish the current step, then the run ends with a checkpoint."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            self._stop = True

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _eta_seconds(target: Target, clock: dict, img_per_s: float, batch: int) -> float:
    if target.unit == "minutes":
        return max(target.value - clock["minutes"], 0) * 60
    images_left = (target.value - clock["kimg"]) * 1000 if target.unit == "kimg" else (target.value - clock["steps"]) * batch
    return max(images_left, 0) / max(img_per_s, 1e-9)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _count(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines a killed run wrote after its last checkpoint, so a resumed log has no repeats."""
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if _step_of(line) <= step]
        if len(kept) != len(lines):
            atomic_write_bytes(path, "".join(kept).encode())


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError):
        return math.inf  # a line cut short by the kill
