"""A cache of Inception features of image sources (real data, mostly), so each evaluation
extracts only the generated images.

An entry is keyed by the sha256 of: the source's content hash (a prepared dataset's
`content_hash`, or the hash of the image files themselves), the split, the image count,
the preprocessing and the weights' sha256. A changed dataset has another key and never
reuses stale features. Entries hold the exact float32 features (every statistic is then
computed from them in float64) as .npz, read with allow_pickle=False, plus a JSON file
saying what they are; both written atomically, the JSON last.

Location: $ANIMEGEN_CACHE/fid-stats, default ~/.cache/animegen/fid-stats. Deleting it is safe.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from animegen.io import atomic_write_bytes, atomic_write_json, read_json
from animegen.metrics.inception import DIMS, PREPROCESSING, InceptionV3
from animegen.metrics.sources import ImageSource

CACHE_ENV = "ANIMEGEN_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "animegen") / "fid-stats"


def cached_features(source: ImageSource, net: InceptionV3, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """The source's features from the cache, or extracted now and stored."""
    identity = {"content_sha256": source.content(), "split": source.split, "count": source.count,
                "preprocessing": PREPROCESSING, "weights_sha256": net.sha256}
    stem = cache_dir() / hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    features = _load(stem, identity)
    if features is None:
        features = net.extract(source.batches(batch_size), num=source.count, batch_size=batch_size,
                               progress=progress, label=source.label)
        _store(stem, features, {**identity, "source": source.label, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return features


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
