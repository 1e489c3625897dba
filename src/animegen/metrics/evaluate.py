"""Metrics between two image sets, and of a generator against real data.

Features are extracted once per set and serve every feature metric; real sets come from
the cache when it has them.
"""

from __future__ import annotations

import os
import time
from typing import Iterable, Sequence

import numpy as np
import torch

from animegen.data.limits import MAX_BATCH_SIZE
from animegen.data.store import read_manifest
from animegen.errors import UserError
from animegen.io import to_uint8
from animegen.metrics.cache import cached_features, entry, stored_features
from animegen.metrics.inception import RESIZE, InceptionV3, weights_path, weights_sha256
from animegen.metrics.catalog import Metric, lookup
from animegen.metrics.sources import open_source
from animegen.settings import check_int


def compare_sources(a: str | os.PathLike, b: str | os.PathLike, metrics: Sequence[str] = ("fid",), split: str = "test",
                    num: int | None = None, device: str | torch.device = "auto", batch_size: int = 64,
                    inception_path: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """Feature metrics between image sets A and B (folders, zips or prepared datasets).

    A is the reference ("real") set: precision is B's share inside A's manifold. FID and KID
    are symmetric. `num` keeps the first `num` images of each side.
    """
    check_int("--batch-size", batch_size, 1, MAX_BATCH_SIZE)
    chosen = lookup(metrics)
    _require_features(chosen)
    source_a, source_b = open_source(a, split, num), open_source(b, split, num)  # both checked before any work
    net = InceptionV3(inception_path, device)
    features_a, features_b = (cached_features(s, net, batch_size, progress) for s in (source_a, source_b))
    return {**_scores(chosen, features_a, features_b), "num_a": len(features_a), "num_b": len(features_b),
            "a": source_a.label, "b": source_b.label, **_protocol(net, split)}


def evaluate_generator(sample_batches: Iterable[torch.Tensor], real: str | os.PathLike, split: str = "test",
                       metrics: Sequence[str] = ("fid",), num: int | None = None,
                       device: str | torch.device = "auto", batch_size: int = 64,
                       inception_path: str | os.PathLike | None = None, progress: bool = False,
                       generator=None, num_real: int | None = None, echo=None) -> dict:
    """Metrics of generated images (NCHW tensors in [-1, 1], quantized to uint8 as saved
    PNGs are) against a real image set (usually a prepared dataset's test split, whole).

    `num` caps the generated images taken from `sample_batches`, `num_real` the real ones
    (the first of the set). Generator-based metrics (registry inputs="generator") are given
    `generator` itself, one call per shared fn. Extracting real features the cache lacks is
    announced through `echo` (default: stderr with `progress`).
    """
    chosen = lookup(metrics)
    by_features = [m for m in chosen if m.inputs == "features"]
    for metric in chosen:  # before any work: a metric that cannot apply fails first
        if metric.inputs == "generator":
            if generator is None:
                raise UserError(f"{metric.name} is computed from the generator itself, and none was given.")
            if metric.check is not None:
                metric.check(generator)
    result = {}
    if by_features:
        source = open_source(real, split, num_real)
        net = InceptionV3(inception_path, device)
        real_features = cached_features(source, net, batch_size, progress, echo)
        generated = net.extract((to_uint8(x) for x in sample_batches), num=num, batch_size=batch_size,
                                progress=progress, label="generated")
        result = {**_scores(by_features, real_features, generated), "num_real": len(real_features),
                  "num_generated": len(generated), "real": source.label, **_protocol(net, split)}
    for fn, names in _generator_passes(chosen).items():
        result.update(fn(generator, names, num=num, batch_size=batch_size))
    return result


def reference_features(data: str | os.PathLike, split: str = "test", device: str | torch.device = "auto",
                       batch_size: int = 64, inception_path: str | os.PathLike | None = None, echo=None) -> dict:
    """`animegen data fid-stats`: the Inception features of a dataset's whole split, computed
    once into the cache (announced, with a progress bar) so that every later training
    snapshot, eval and compare on it reads them. Says what it found or made, and where."""
    check_int("--batch-size", batch_size, 1, MAX_BATCH_SIZE)
    read_manifest(data)  # a prepared dataset, not an image folder
    source, start = open_source(data, split), time.perf_counter()
    sha256 = weights_sha256(weights_path(inception_path))  # the network itself is loaded only if needed
    features = stored_features(source, sha256)
    found = features is not None
    if not found:
        features = cached_features(source, InceptionV3(inception_path, device), batch_size, progress=True, echo=echo)
    return {"count": len(features), "source": source.label, "cached_before": found,
            "seconds": time.perf_counter() - start, "file": str(entry(source, sha256)[0].with_suffix(".npz"))}


def _generator_passes(metrics: list[Metric]) -> dict:
    """The generator metrics grouped by their fn: one call (one pass over the generator) each."""
    passes = {}
    for metric in metrics:
        if metric.inputs == "generator":
            passes.setdefault(metric.fn, []).append(metric.name)
    return passes


def _require_features(metrics: list[Metric]) -> None:
    other = [m.name for m in metrics if m.inputs != "features"]
    if other:
        raise UserError(f"{', '.join(other)} need a generator, not image sets; use `animegen eval` on a run.")


def _scores(metrics: list[Metric], real: np.ndarray, generated: np.ndarray) -> dict:
    result = {}
    for metric in metrics:
        result.update(metric.fn(real, generated))
    return result


def _protocol(net: InceptionV3, split: str) -> dict:
    return {"split": split, "inception_sha256": net.sha256[:12], "resize": RESIZE}
