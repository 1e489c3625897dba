"""A cache of Inception features of image sources (real data, mostly), so each evaluation
extracts only the generated images.

An entry is keyed by the sha256 of: the source's content hash (a prepared dataset's
`content_hash`, or the hash of the image files themselves), the split, the image count,
the preprocessing and the weights' sha256. A changed dataset has another key and never
reuses stale features. The first N images of a split are read from the whole split's
entry when there is one (`animegen data fid-stats` makes it), else from their own entry.
Entries hold the exact float32 features (every statistic is then computed from them in
float64) as .npz, read with allow_pickle=False, plus a JSON file saying what they are;
both written atomically, the JSON last.

Extracting is the slow part on a CPU (a few images a second, so half an hour for a
5,000-image test split): it is announced with the count, the time it will take (timed on
the first few images) and where the features are kept, and shows a progress bar.

Location: $ANIMEGEN_CACHE/fid-stats, default ~/.cache/animegen/fid-stats. Deleting it is safe.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from animegen.io import atomic_write_bytes, atomic_write_json, duration, read_json
from animegen.metrics.inception import DIMS, PREPROCESSING, InceptionV3
from animegen.metrics.sources import ImageSource

CACHE_ENV = "ANIMEGEN_CACHE"
WARMUP = 8  # images timed before the estimate is announced: a few seconds on a CPU


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "animegen") / "fid-stats"


def entry(source: ImageSource, weights_sha256: str, count: int | None = None) -> tuple[Path, dict]:
    """The cache file stem and identity of the first `count` (default: all) of the source's images."""
    identity = {"content_sha256": source.content(), "split": source.split, "count": count or source.count,
                "preprocessing": PREPROCESSING, "weights_sha256": weights_sha256}
    return cache_dir() / hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32], identity


def stored_features(source: ImageSource, weights_sha256: str) -> np.ndarray | None:
    """The source's features if the cache holds them: the first rows of its whole split's
    entry, or its own entry."""
    for count in dict.fromkeys((source.whole, source.count)):
        features = _load(*entry(source, weights_sha256, count))
        if features is not None:
            return features[: source.count]
    return None


def cached_features(source: ImageSource, net: InceptionV3, batch_size: int = 64, progress: bool = False,
                    echo: Callable[[str], None] | None = None) -> np.ndarray:
    """The source's features from the cache, or extracted now (announced through `echo`, or
    on stderr with `progress`) and stored."""
    features = stored_features(source, net.sha256)
    if features is None:
        stem, identity = entry(source, net.sha256)
        say = echo or ((lambda line: print(line, file=sys.stderr)) if progress else (lambda line: None))
        features = _extract(source, net, batch_size, progress, say, stem)
        _store(stem, features, {**identity, "source": source.label, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return features


def _extract(source: ImageSource, net: InceptionV3, batch_size: int, progress: bool, say, stem: Path) -> np.ndarray:
    """All the source's features: the first WARMUP images timed, the estimate announced, the rest."""
    start = time.perf_counter()
    warm = min(WARMUP, source.count)
    head = net.extract(source.batches(warm), num=warm, batch_size=warm)
    per_image = (time.perf_counter() - start) / warm
    say(f"reference features: {source.count} images of {source.label} are not cached; extracting them takes "
        f"about {duration(per_image * source.count)} here ({1 / per_image:.1f} img/s, timed on {warm}); "
        f"kept in {stem}.npz for every later run, eval and compare")
    rest = net.extract(_skip(source.batches(batch_size), warm), num=source.count - warm, batch_size=batch_size,
                       progress=progress, label="reference features") if source.count > warm else head[:0]
    say(f"reference features: done in {duration(time.perf_counter() - start)}")
    return np.concatenate([head, rest])


def _skip(batches: Iterator, count: int) -> Iterator:
    """The batches without their first `count` images."""
    for batch in batches:
        if count < len(batch):
            yield batch[count:]
        count = max(count - len(batch), 0)


def _load(stem: Path, identity: dict) -> np.ndarray | None:
    try:
        info = read_json(stem.with_suffix(".json"))
        with np.load(stem.with_suffix(".npz"), allow_pickle=False) as f:
            features = f["features"]
    except (OSError, ValueError, KeyError):  # absent, or damaged: extract again
        return None
    complete = features.shape == (identity["count"], DIMS) and features.dtype == np.float32
    return features if complete and all(info.get(k) == v for k, v in identity.items()) else None


def _store(stem: Path, features: np.ndarray, info: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, features=features)
    atomic_write_bytes(stem.with_suffix(".npz"), buf.getvalue())
    atomic_write_json(stem.with_suffix(".json"), info)
