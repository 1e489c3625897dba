"""The one training loop, for every family.

Per step: next batch -> objective.train_step -> EMA (and the post-hoc EMAs) -> losses
averaged over ranks and checked (NaN/Inf stops the run without saving) -> then, when due:
progress line and scalars (with an ETA that counts the snapshots still due), sample grid,
post-hoc EMA snapshot, FID snapshot (kept with the checkpoint written at that step),
checkpoint. A run always ends with a checkpoint, also on Ctrl-C / SIGTERM: the current step
finishes, a grid or FID snapshot under way is abandoned, and the command exits with 130 /
143 after writing it. A second Ctrl-C exits at once (the last checkpoint stays).

The run folder (layout, checkpoints, lifecycle) belongs to animegen.runs; how a run starts
(its config, new or resumed) to training.plan; the signal handling to training.signals; the
peak-memory measurement to training.memory; what a FID snapshot measures and costs to
training.snapshots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time

import numpy as np
import torch

from animegen import runs
from animegen.errors import UserError
from animegen.generate import sample_grid, sampling_layout
from animegen.io import duration, image_grid, save_grid
from animegen.models import registry
from animegen.training import checkpoint, distributed, transfer
from animegen.training.config import Every, RunConfig, describe_change, resolve_precision
from animegen.training.data import TrainStream
from animegen.training.ema import PowerEMAs, ema_beta, make_ema, update_ema
from animegen.training.memory import PeakMemory, out_of_memory_as_user_error
from animegen.training.plan import check_fits, parameter_counts, plan_run, resolved_config, set_snapshots
from animegen.training.signals import Abandon, StopSignals
from animegen.training.snapshots import Snapshots

DRAWS, MODULES = 1, 2  # streams of derived_seed: the objective's draws, module-internal randomness


class Target:
    """When to stop: a total number of steps, thousands of images, or minutes of training."""

    LIMITS = {"steps": 10**12, "kimg": 1e9, "minutes": 1e7}

    def __init__(self, steps: int | None = None, kimg: float | None = None, minutes: float | None = None):
        given = {k: v for k, v in (("steps", steps), ("kimg", kimg), ("minutes", minutes)) if v is not None}
        if len(given) != 1:
            raise UserError("give exactly one of --steps, --kimg and --minutes.")
        (self.unit, self.value), = given.items()
        if not 0 < self.value <= self.LIMITS[self.unit]:  # also refuses NaN
            raise UserError(f"--{self.unit} {self.value} is out of range: it must be in (0, {self.LIMITS[self.unit]:g}].")

    def reached(self, clock: dict) -> bool:
        return clock[self.unit] >= self.value

    def describe(self) -> str:
        return f"{self.value:g} {self.unit}"


def train(run: str, *, model: str | None = None, data: str | None = None, preset: str | None = None,
          sets: dict | None = None, target: Target | None = None, resume: bool = False, device: str = "auto",
          seed: int | None = None, fid_every: str | None = None, fid_num: int | None = None,
          fid_real: int | None = None, init_from: str | None = None, dry_run: bool = False, echo=print) -> dict:
    """Start (or with resume=True continue) the run in folder `run`; returns the end summary
    ("signal" is set when SIGINT/SIGTERM stopped it). A new run uses `preset` (default tiny),
    `sets` and `seed` (default 0), and starts from the weights of run or checkpoint
    `init_from` where names and shapes match (training.transfer). A resumed run keeps its
    config.json: options given again must equal the stored ones, except the FID snapshot
    settings. A run folder without a checkpoint starts again. `dry_run` returns the resolved
    config and parameter counts without touching the folder."""
    folder = runs.Run(run)
    request = {"model": model, "data": data, "preset": preset, "sets": sets or {}, "seed": seed,
               "init_from": init_from}
    ctx = distributed.setup(device)
    if "precision" in request["sets"]:  # "auto" compares and is stored as what it means here
        request["sets"] = {**request["sets"], "precision": resolve_precision(request["sets"]["precision"],
                                                                            ctx.device.type)}
    try:
        config, mode, line = plan_run(folder, request, resume, ctx.device.type)
        config.train.precision = resolve_precision(config.train.precision, ctx.device.type)
        changes = set_snapshots(config, fid_every, fid_num, fid_real)
        sizes = parameter_counts(config)
        if dry_run:
            return {"config": resolved_config(config, ctx.device.type), "parameters": sizes, "start": line or mode}
        if target is None:
            raise UserError("give one of --steps, --kimg and --minutes.")
        check_fits(sizes, ctx.device, len(config.train.posthoc_ema or ()))
        with out_of_memory_as_user_error():
            trainer = Trainer(folder, config, ctx, echo)  # reads nothing of the folder
            with folder.lock() if ctx.rank == 0 else contextlib.nullcontext():
                return _train(trainer, mode, line, init_from, target, changes if mode == "resume" else {})
    finally:
        distributed.teardown(ctx)


def _train(trainer: Trainer, mode: str, line: str | None, init_from, target: Target, changes: dict) -> dict:
    folder, ctx = trainer.folder, trainer.ctx
    if ctx.rank == 0:
        removed = folder.remove_interrupted_writes()
        if removed:
            trainer._log_line(f"removed what an interrupted run left: {', '.join(removed)}")
        if line:
            trainer._log_line(line)
    distributed.barrier(ctx)
    if mode == "resume" and folder.steps():
        tensors, state, problems = folder.load_newest_readable(set_aside=ctx.rank == 0)
        for problem in problems:
            trainer._log_line(f"skipping an unreadable checkpoint: {problem}")
        if problems:
            trainer._log_line(f"resuming from the newest readable one, step {state['step']}.")
        trainer.load(tensors, state)
    elif init_from is not None or (mode == "resume" and folder.read_init_from()):
        source = init_from if init_from is not None else folder.read_init_from()["checkpoint"]
        report = transfer.init_from(source, trainer.modules())
        trainer._log_line(transfer.describe(report))
        if ctx.rank == 0:
            folder.write_init_from(report)
    trainer.forget_later_history()
    if changes:
        trainer.config.resumed_changes.append({"step": trainer.step, **changes})
        trainer._log_line("changed on resume (recorded in config.json): " + describe_change(changes))
    if ctx.rank == 0 and (mode != "resume" or changes or folder.read_config().get("data") is None):
        folder.write_config(trainer.config.to_json())  # a new run's; a resumed one's changes; an import's dataset
    distributed.barrier(ctx)
    return trainer.run(target)


class Trainer:
    def __init__(self, folder: runs.Run, config: RunConfig, ctx, echo):
        ctx = dataclasses.replace(ctx, precision=config.train.precision)
        self.folder, self.config, self.ctx, self.echo = folder, config, ctx, echo
        self.spec = registry.get(config.model)
        self.tc = config.train
        self.every = {name: Every(getattr(self.tc, f"{name}_every")) for name in ("log", "sample", "ckpt", "fid")}
        self.every["posthoc"] = Every(self.tc.posthoc_every if self.tc.posthoc_ema else None)
        self.stream = TrainStream(config.data, self.tc.batch, config.seed, self.tc.xflip, ctx.rank, ctx.world_size)
        self.snapshots = Snapshots(config, ctx.device, self._log_line, self._save_config)
        if not self.every["fid"].off and ctx.rank == 0:
            self.snapshots.check()
        torch.manual_seed(config.seed)  # identical initialization on every rank
        if ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = self.spec.model(config.model_config).to(ctx.device)
        self.ema = sampling_layout(make_ema(self.model))
        self.posthoc = PowerEMAs(self.model, self.tc.posthoc_ema)
        self.objective = self.spec.objective(self.model, config.objective_config, ctx)
        self.objective.draws.manual_seed(derived_seed(config.seed, DRAWS))
        self.objective.prepare(self.tc.compile)  # after the EMA copy, which samples eagerly
        self.step, self.nimg, self.seconds = 0, 0, 0.0
        self.saved_step = self.snapshot_step = self.grid_step = self.posthoc_step = None
        self.start_step = 0
        self._writer = None
        self.memory = PeakMemory(ctx.device)
        self.signals = StopSignals(last_checkpoint=lambda: self.saved_step)
        self._stop = False  # agreed by every rank at the end of each step and checkpoint

    # ------------------------------------------------------------ state
    @property
    def clock(self) -> dict:
        return {"steps": self.step, "kimg": self.nimg / 1000, "minutes": self.seconds / 60}

    def modules(self) -> dict[str, torch.nn.Module]:
        """What --init-from fills; the post-hoc EMAs need nothing (step 1 replaces what they hold)."""
        return {"model": self.model, "ema": self.ema, **{f"net.{k}": v for k, v in self.objective.nets.items()}}

    def saved_modules(self) -> dict[str, torch.nn.Module]:
        """What a checkpoint holds: the modules and the post-hoc EMAs, by checkpoint prefix."""
        return {**self.modules(), **self.posthoc.modules()}

    def load(self, tensors: dict, state: dict) -> None:
        for prefix, module in self.saved_modules().items():
            module.load_state_dict(runs.module_state(tensors, prefix), strict=True)
        for name, opt in self.objective.optimizers.items():
            checkpoint.load_optimizer(f"optim.{name}", opt, tensors, state["optimizers"][name])
        self.objective.load_extra_state(state["objective"])
        checkpoint.load_rng(self.objective.draws, tensors)
        self.stream.load_state(state["data"])
        self.step, self.nimg, self.seconds = state["step"], state["nimg"], state["train_seconds"]
        self.saved_step = self.grid_step = self.start_step = self.step
        self.snapshot_step = self.step if "snapshot" in state else None
        self.snapshots.remember(state.get("snapshot", {}))

    def forget_later_history(self) -> None:
        """Log lines, grids and TensorBoard events after the starting step are a killed run's:
        dropped, so each step is recorded once."""
        if self.ctx.rank == 0:
            self.folder.forget_after(self.start_step)

    def save(self, snapshot: dict | None = None) -> None:
        distributed.check_in_sync(self.ctx, self.modules().values())
        if self.ctx.rank == 0:
            tensors = checkpoint.modules_tensors(self.saved_modules())
            layouts = {}
            for name, opt in self.objective.optimizers.items():
                opt_tensors, layouts[name] = checkpoint.optimizer_tensors(f"optim.{name}", opt)
                tensors.update(opt_tensors)
            tensors.update(checkpoint.rng_tensors(self.objective.draws))
            state = {"model": self.config.model, "config": self.config.to_json(), "step": self.step,
                     "nimg": self.nimg, "train_seconds": self.seconds, "data": self.stream.state(),
                     "optimizers": layouts, "objective": self.objective.extra_state(),
                     "world_size": self.ctx.world_size, **({"snapshot": snapshot} if snapshot else {})}
            self.folder.save_checkpoint(self.step, tensors, state, self.tc.keep)
        self.saved_step = self.step
        self._agree_on_stop()

    # ------------------------------------------------------------ the loop
    def run(self, target: Target) -> dict:
        start = dict(self.clock)
        self._log_line(f"{self.config.model} on {self.config.data} -> {self.folder} | {self.ctx.device}"
                       f" x{self.ctx.world_size} | from step {self.step} to {target.describe()}")
        window = dict(self.clock)
        with self.signals.installed():
            try:
                while not target.reached(self.clock) and not self._stop:
                    before = dict(self.clock)
                    losses = self._train_step()
                    after = self.clock
                    if self.every["log"].due(before, after):
                        self._progress(losses, window, target, before)
                        window = dict(after)
                    if self.every["sample"].due(before, after):
                        self._grid()
                    if self.every["posthoc"].due(before, after):
                        self._store_posthoc()
                    if self.every["fid"].due(before, after):
                        self._snapshot(target)
                    elif self.every["ckpt"].due(before, after):
                        self.save()
            except Abandon:  # a signal in the instant a grid or snapshot enters or leaves its block
                self._stop = True
            if not self.every["posthoc"].off and self.posthoc_step != self.step and not self._stop:
                self._store_posthoc()  # a synthesized length is made at the newest snapshot's step
            if not self.every["fid"].off and self.snapshot_step != self.step and not self._stop:
                self._snapshot(target)
            if self.saved_step != self.step:
                self.save()
            if self.grid_step != self.step and not self._stop:
                self._grid()
            return self._finish(start)

    def _train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        real = self.stream.next(self.ctx.device)
        # Dropout and other module-internal randomness: its own numbers on each rank, and the
        # same on resume, with no state to save.
        torch.manual_seed(derived_seed(self.config.seed, MODULES, self.ctx.rank, self.step))
        losses = self.objective.train_step(real, self.step)
        self.step += 1
        self.nimg += self.tc.batch
        distributed.average_buffers(self.ctx, [self.model, *self.objective.nets.values()])
        update_ema(self.ema, self.model, ema_beta(self.nimg, self.tc.batch, self.tc.ema_kimg, self.tc.ema_rampup))
        self.posthoc.update(self.model, self.step)
        names = list(losses)
        values = torch.stack([losses[k].detach().float().reshape(()) for k in names]
                             + [torch.tensor(float(self._stop_requested), device=self.ctx.device)])
        values = distributed.mean_over_ranks(self.ctx, values).tolist()  # .tolist() waits for the GPU
        self.seconds += time.perf_counter() - t0
        # Or-ed, never overwritten: a signal that arrives during the reduction is not lost.
        self._stop = values.pop() > 0 or self._stop_requested
        losses = dict(zip(names, values))
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad:
            last = (f"{self.folder.checkpoint(self.saved_step)} (step {self.saved_step})"
                    if self.saved_step else "none")
            raise UserError(f"non-finite loss at step {self.step} ({', '.join(f'{k}={v}' for k, v in bad.items())}); "
                            f"training stopped without saving; last good checkpoint: {last}. "
                            "Lower the learning rate (--set lr=...).")
        return losses

    @property
    def _stop_requested(self) -> bool:
        """This rank's own reason to stop: a signal, or a grid or snapshot it abandoned."""
        return self._stop or self.signals.received is not None

    def _agree_on_stop(self) -> None:
        """Every rank stops together: a signal or an abandoned snapshot on one stops all."""
        local = torch.tensor([float(self._stop_requested)], device=self.ctx.device)
        self._stop = distributed.mean_over_ranks(self.ctx, local).item() > 0

    # ------------------------------------------------------------ outputs (rank 0)
    def _progress(self, losses: dict, window: dict, target: Target, before: dict) -> None:
        seconds = (self.seconds - window["minutes"] * 60) or 1e-9
        rate = (self.nimg - window["kimg"] * 1000) / seconds
        text = "  ".join(f"{k} {v:.4g}" for k, v in losses.items())
        self._log_line(f"step {self.step:>7}  kimg {self.nimg / 1000:8.2f}  {rate:7.1f} img/s  {text}"
                       f"  ETA {self._eta(target, rate, before)}")
        self._record({"event": "train", "img_per_s": rate, "peak_mem_mb": self.memory.training_mb(), **losses},
                     {f"loss/{k}": v for k, v in losses.items()} | {"perf/img_per_s": rate})

    def _write_grid(self) -> None:
        with self._abandoned_on_signal("sample grid"), self.memory.apart(), self._sampling_rng():
            grid = sample_grid(self.ema, range(self.tc.grid_seeds), batch_size=self._sample_batch)
            save_grid(grid, self.folder.grid(self.step))
            if self.tc.tensorboard:
                self._tensorboard().add_image("samples", image_grid(grid), self.step, dataformats="HWC")

    def _grid(self) -> None:
        """The grid on rank 0, then every rank agrees whether a signal stopped it."""
        self.grid_step = self.step
        if self.ctx.rank == 0:
            self._write_grid()
        self._agree_on_stop()

    def _eta(self, target: Target, rate: float, before: dict) -> str:
        """Time to the target at `rate` img/s, with the snapshots due after clock `before` (the
        one this step may be due included) and their share said, or training alone with a
        note when no snapshot has been timed yet."""
        end = projected_end(target, self.clock, rate, self.tc.batch)
        training = (end["minutes"] - self.clock["minutes"]) * 60
        snapshots = self.snapshots.seconds_left(before, end)
        if snapshots is None:
            return f"{duration(training)} + FID snapshots (timed at the first)"
        return duration(training + snapshots) + (f" (snapshots {duration(snapshots)})" if snapshots else "")

    def _store_posthoc(self) -> None:
        """The post-hoc EMAs of this step as RUN/posthoc/step-N (by rank 0: they are the same on every rank)."""
        self.posthoc_step = self.step
        if self.ctx.rank == 0:
            tensors = checkpoint.modules_tensors(self.posthoc.modules())
            self.folder.save_posthoc(self.step, tensors, {"step": self.step, "nimg": self.nimg,
                                                          "train_seconds": self.seconds, **self.posthoc.describe()})

    def _snapshot(self, target: Target) -> None:
        """An FID snapshot (training.snapshots) of the EMA weights, written with the checkpoint
        of this step. A signal abandons it; the checkpoint is still written."""
        snapshot = None
        if self.ctx.rank == 0:
            with self._abandoned_on_signal("FID snapshot"), self.memory.apart(), self._sampling_rng():
                end = projected_end(target, self.clock, self.nimg / max(self.seconds, 1e-9), self.tc.batch)
                snapshot = self.snapshots.measure(self.ema, end, self._sample_batch)
            if snapshot is not None:  # recorded only once complete, so a log line always has its checkpoint
                self._log_snapshot(snapshot)
                self._record({"event": "fid", **snapshot}, {f"metrics/{k}": v for k, v in snapshot.items()
                                                            if isinstance(v, (int, float))
                                                            and not k.startswith(("num", "seconds"))})
        if snapshot is not None or self.ctx.rank != 0:
            self.snapshot_step = self.step
        self.save(snapshot)

    def _log_snapshot(self, snapshot: dict) -> None:
        others = "  ".join(f"{k} {snapshot[k]:.4g}" for k in ("kid", "precision", "recall") if k in snapshot)
        self._log_line(f"step {self.step:>7}  FID-{_count(snapshot['num'])} {snapshot['fid']:.2f}  {others}  "
                       f"({snapshot['num']} generated vs {snapshot['num_real']} test images, "
                       f"{duration(snapshot['seconds'])})")

    def _save_config(self) -> None:
        if self.ctx.rank == 0:
            self.folder.write_config(self.config.to_json())

    def _finish(self, start: dict) -> dict:
        seconds = self.seconds - start["minutes"] * 60
        summary = {"event": "end", "img_per_s": (self.nimg - start["kimg"] * 1000) / (seconds or 1e-9),
                   "peak_mem_mb": self.memory.training_mb(), "sampling_peak_mem_mb": self.memory.apart_mb,
                   "stopped_early": self._stop,
                   "checkpoint": str(self.folder.checkpoint(self.step))}
        self._record(summary, {})
        signum = self.signals.received
        how = "done" if not self._stop else f"stopped{f' by {signal.Signals(signum).name}' if signum else ''}"
        self._log_line(f"{how}: step {self.step}, {self.nimg / 1000:.2f} kimg, "
                       f"{self.seconds / 60:.1f} min of training, {summary['img_per_s']:.1f} img/s, "
                       f"peak memory {summary['peak_mem_mb']:.0f} MB in training steps "
                       f"({summary['sampling_peak_mem_mb']:.0f} MB in grids and snapshots); "
                       f"checkpoint {summary['checkpoint']}"
                       + (f"; continue with: animegen train --out {self.folder} --resume ..." if self._stop else ""))
        if self._writer is not None:
            self._writer.close()
        return {"step": self.step, "kimg": self.nimg / 1000, "train_seconds": self.seconds, "signal": signum,
                **summary}

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
        self.folder.append_metrics(entry)
        for key, value in scalars.items() if self.tc.tensorboard else ():
            self._tensorboard().add_scalar(key, value, self.step)

    def _tensorboard(self):
        if self._writer is None:
            self._writer = self.folder.tensorboard(self.start_step)
        return self._writer

    def _sampling_rng(self):
        """Sampling on rank 0 must leave the training randomness untouched."""
        return torch.random.fork_rng(devices=[self.ctx.device] if self.ctx.device.type == "cuda" else [])

    @contextlib.contextmanager
    def _abandoned_on_signal(self, what: str):
        """A signal during this block gives it up at once; the run then stops at the next
        checkpoint, which is written as usual."""
        try:
            with self.signals.abandonable():
                yield
        except Abandon:
            self._stop = True
            self._log_line(f"interrupted: {what} at step {self.step} abandoned; writing the checkpoint")


def derived_seed(*key: int) -> int:
    """A 63-bit seed from integers (the run's seed, a stream, rank, step), well mixed."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def projected_end(target: Target, clock: dict, img_per_s: float, batch: int) -> dict:
    """The clock (steps, kimg, minutes of training) when the run reaches `target`, training
    at `img_per_s` from `clock` on."""
    images = {"minutes": (target.value - clock["minutes"]) * 60 * img_per_s,
              "kimg": (target.value - clock["kimg"]) * 1000, "steps": (target.value - clock["steps"]) * batch}
    left = max(images[target.unit], 0)
    return {"steps": clock["steps"] + left / batch, "kimg": clock["kimg"] + left / 1000,
            "minutes": clock["minutes"] + left / max(img_per_s, 1e-9) / 60}


def _count(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)
