"""FID snapshots while training (rank 0 alone): how many images they measure, what they cost,
and the measurement.

A snapshot is FID (with KID and precision/recall, nearly free from the same Inception
features) of the EMA weights' images of seeds 0..fid_num-1 against the first fid_real images
of the test split. Counts a run leaves unset are chosen at its first snapshot and written to
its config.json, so that every snapshot of the run, resumed too, measures the same thing:

- on a GPU: 1000 generated images against the whole test split;
- on a CPU, where Inception takes about a third of a second an image: as many as let all
  the run's snapshots, plus the reference features of the real images when the cache lacks
  them, take about a fifth of its training time (an image's cost timed on a few seeds
  first); the whole split when its features are cached, since they then cost nothing
  (`animegen data fid-stats` caches them ahead).

The Inception network is loaded at the first snapshot; before step 0 only its file and the
test split are checked, so a run starts in seconds.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from animegen.generate import sample_batches
from animegen.io import duration, to_uint8
from animegen.metrics import InceptionV3, evaluate_generator
from animegen.metrics.cache import cached_features, stored_features
from animegen.metrics.inception import weights_path
from animegen.metrics.sources import open_source
from animegen.models.base import Model
from animegen.training.config import Every, RunConfig

METRICS = ("fid", "kid", "pr")
SHARE = 0.2  # of a CPU run's training time that its snapshots may take
GPU_GENERATED = 1000
MIN_IMAGES, MAX_GENERATED = 32, 1000  # the range of a CPU run's chosen counts
WARMUP = 8  # seeds an image's cost is timed on
# Inception images per forward pass in CPU snapshots: one pass cannot be interrupted, so it
# must stay short for Ctrl-C to be honoured within seconds.
CPU_INCEPTION_BATCH = 8


class Snapshots:
    """The run's snapshots: `measure` takes one; `seconds_left` says what the rest will cost.
    `save_config` records counts chosen at the first snapshot in the run folder."""

    def __init__(self, config: RunConfig, device: torch.device, echo: Callable[[str], None],
                 save_config: Callable[[], None]):
        self.config, self.device, self.echo, self.save_config = config, device, echo, save_config
        self.every = Every(config.train.fid_every)
        self.image_seconds: float | None = None  # a generated image's cost in a snapshot, as last measured

    def check(self) -> None:
        """Fail before step 0, not at the first snapshot."""
        weights_path()
        open_source(self.config.data, "test")

    def remember(self, snapshot: dict) -> None:
        """A resumed run's estimates start from the cost its last snapshot measured."""
        if snapshot.get("seconds") and snapshot.get("num"):
            self.image_seconds = snapshot["seconds"] / snapshot["num"]

    def seconds_left(self, now: dict, end: dict) -> float | None:
        """What the snapshots due after clock `now` up to clock `end` (the run's last included)
        will take, or None before there is anything to estimate it from."""
        if self.every.off:
            return 0.0
        tc = self.config.train
        if self.image_seconds is not None and tc.fid_num is not None:
            return self.every.left(now, end) * self.image_seconds * tc.fid_num
        if self.device.type == "cpu" and tc.fid_num is None:  # to be sized to a share of the training
            return SHARE * (end["minutes"] - now["minutes"]) * 60
        return None

    def measure(self, ema: Model, end: dict, sample_batch: int) -> dict:
        """A snapshot of `ema` (the run ending at clock `end`): its numbers, counts and cost."""
        net = InceptionV3(device=self.device)
        if self.config.train.fid_num is None or self.config.train.fid_real is None:
            self._choose_counts(ema, net, end)
        tc, batch = self.config.train, CPU_INCEPTION_BATCH if self.device.type == "cpu" else sample_batch
        real = open_source(self.config.data, "test", tc.fid_real)
        cached_features(real, net, batch, progress=True, echo=self.echo)  # announced when not cached yet
        start = time.perf_counter()
        options = ema.resolve_sample_options({})
        result = evaluate_generator(sample_batches(ema, range(tc.fid_num), sample_batch, options),
                                    real=self.config.data, split="test", metrics=METRICS, num=tc.fid_num,
                                    num_real=tc.fid_real, device=self.device, batch_size=batch, progress=True)
        seconds = time.perf_counter() - start
        self.image_seconds = seconds / tc.fid_num
        numbers = {k: v for k, v in result.items() if isinstance(v, (int, float))}
        return {**numbers, "num": tc.fid_num, "split": "test", "sample_options": options, "seconds": round(seconds, 2)}

    def _choose_counts(self, ema: Model, net: InceptionV3, end: dict) -> None:
        tc, split = self.config.train, open_source(self.config.data, "test")
        if self.device.type != "cpu":
            tc.fid_num, tc.fid_real = tc.fid_num or GPU_GENERATED, tc.fid_real or split.count
            line = f"{tc.fid_num} generated images against {tc.fid_real} of the {split.count} test images"
        else:
            render, extract = self._time_an_image(ema, net)
            cached = stored_features(open_source(self.config.data, "test", tc.fid_real), net.sha256) is not None
            count = max(self.every.left({"steps": 0, "kimg": 0, "minutes": 0}, end), 1)
            train_seconds = end["minutes"] * 60
            tc.fid_num, tc.fid_real = cpu_counts(tc.fid_num, tc.fid_real, split.count, cached, count,
                                                 render + extract, extract, SHARE * train_seconds)
            share = (count * tc.fid_num * (render + extract) + (0 if cached else tc.fid_real * extract)) / train_seconds
            line = (f"{tc.fid_num} generated images against {tc.fid_real} of the {split.count} test images"
                    f"{'' if cached else ' (their features are not cached yet)'}, so that the run's {count} "
                    f"snapshots take about {share:.0%} of its {duration(train_seconds)} of training "
                    f"(an image: {render:.2f} s to render, {extract:.2f} s through Inception, timed on {WARMUP})"
                    + (f"; --fid-every {self._interval(share / SHARE)} would keep them near a fifth"
                       if share > 1.25 * SHARE else ""))
        self.save_config()
        self.echo(f"FID snapshots: {line}; recorded in config.json (--fid-num and --fid-real choose others)")

    def _interval(self, factor: float) -> str:
        """The snapshot interval `factor` times longer, as --fid-every takes it."""
        every = self.every.every * factor
        return {"steps": f"{math.ceil(every)}", "kimg": f"{every:.3g}kimg", "minutes": f"{every:.3g}min"}[self.every.unit]

    def _time_an_image(self, ema: Model, net: InceptionV3) -> tuple[float, float]:
        """Seconds to render one image and to take its features, timed on WARMUP seeds."""
        start = time.perf_counter()
        images = to_uint8(next(sample_batches(ema, range(WARMUP), WARMUP, ema.resolve_sample_options({}))))
        rendered = time.perf_counter()
        net(images)
        return (rendered - start) / WARMUP, (time.perf_counter() - rendered) / WARMUP


def unset_counts(device_type: str) -> dict:
    """What fid_num and fid_real left unset will be, said before the first snapshot chooses them."""
    if device_type != "cpu":
        return {"fid_num": GPU_GENERATED, "fid_real": "the whole test split"}
    return {"fid_num": f"chosen at the first snapshot: snapshots take about {SHARE:.0%} of the training time "
                       f"({MIN_IMAGES} to {MAX_GENERATED})",
            "fid_real": "the whole test split if its features are cached, else chosen as fid_num"}


def cpu_counts(generated: int | None, real: int | None, whole: int, cached: bool, snapshots: int,
               image_seconds: float, extract_seconds: float, budget: float) -> tuple[int, int]:
    """(generated, real) images per snapshot of a CPU run: counts given stay; real images are
    the whole split when their features are `cached` (free); otherwise as many as let
    `snapshots` snapshots at `image_seconds` a generated image, plus the real images'
    features once, fit `budget` seconds, as many real as generated where both are chosen."""
    if real is None and cached:
        real = whole
    if generated is None:
        once = 0.0 if real is None or cached else real * extract_seconds
        each = snapshots * image_seconds + (extract_seconds if real is None else 0.0)
        generated = _clamp((budget - once) / each, MIN_IMAGES, MAX_GENERATED)
    if real is None:
        real = _clamp((budget - snapshots * generated * image_seconds) / extract_seconds, MIN_IMAGES, whole)
    return generated, real


def _clamp(value: float, low: int, high: int) -> int:
    return max(min(int(value), high), min(low, high))
