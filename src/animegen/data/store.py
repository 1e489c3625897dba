"""The prepared-dataset format: one folder holding

    train.npy, test.npy   uint8 arrays N x R x R x 3, memory-mappable
    manifest.json         resolution, seed, counts, sources, labels, skipped inputs, ...

`data prepare` and `data synth` write it; every other command reads it.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from animegen import __version__
from animegen.errors import UserError
from animegen.io import atomic_dir, atomic_write_json, read_json
from animegen.settings import check_fraction

SPLITS = ("train", "test")
FORMAT = "animegen-dataset/1"


def is_dataset(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "manifest.json").is_file() and (p / "train.npy").is_file()


def write_dataset(out: str | os.PathLike, train: np.ndarray, test: np.ndarray, manifest: dict,
                  overwrite: bool = False) -> Path:
    """Write the arrays and manifest into `out` atomically (temp folder, then rename)."""
    for name, arr in (("train", train), ("test", test)):
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
            raise ValueError(f"{name} must be uint8 N x R x R x 3, got {arr.dtype} {arr.shape}")
    manifest = {"format": FORMAT, "tool_version": __version__, **manifest}
    manifest["content_hash"] = content_hash(train, test)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        np.save(tmp / "train.npy", np.ascontiguousarray(train))
        np.save(tmp / "test.npy", np.ascontiguousarray(test))
        atomic_write_json(tmp / "manifest.json", manifest)
    return Path(out)


def content_hash(train: np.ndarray, test: np.ndarray) -> str:
    """sha256 over both splits' shapes and pixels: the identity of a dataset's content."""
    h = hashlib.sha256()
    for arr in (train, test):
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()


def read_manifest(path: str | os.PathLike) -> dict:
    """The dataset's manifest, parsed once per version of the file in a process (a real
    dataset's lists every image: megabytes that starting a run would otherwise parse four
    times). Shared: callers read it, never change it."""
    p = Path(path)
    if not is_dataset(p):
        raise UserError(f"{p} is not a prepared dataset (no manifest.json and train.npy); "
                        "make one with `animegen data prepare` or `animegen data synth`.")
    stat = (p / "manifest.json").stat()
    return _parsed_manifest(p, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _parsed_manifest(p: Path, inode: int, size: int, mtime_ns: int) -> dict:  # a replaced file has another key
    try:
        manifest = read_json(p / "manifest.json")
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise _damaged(p, f"manifest.json: {e}") from None
    if not isinstance(manifest, dict):
        raise _damaged(p, "manifest.json is not a JSON object")
    return manifest


def load_split(path: str | os.PathLike, split: str) -> np.ndarray:
    """The split's uint8 N x R x R x 3 array, memory-mapped (read-only)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    read_manifest(path)
    try:
        images = np.load(Path(path) / f"{split}.npy", mmap_mode="r")
    except (OSError, ValueError) as e:  # missing, truncated, or not a .npy file
        raise _damaged(path, f"{split}.npy: {e}") from None
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
        raise _damaged(path, f"{split}.npy is not a uint8 N x R x R x 3 array")
    return images


def _damaged(path, reason: str) -> UserError:
    return UserError(f"{path} is a damaged dataset ({reason}); prepare it again.")


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train/test split of n items: (train indices, test indices), each sorted.

    round(n * test_fraction) items, chosen by a permutation from numpy's Generator seeded
    with `seed`, go to test; the same (n, test_fraction, seed) always gives the same split.
    Refused when no training image would be left; the test split may round to empty.
    """
    check_fraction("--test-fraction", test_fraction)
    n_test = int(round(n * test_fraction))
    if n_test >= n:
        raise UserError(f"--test-fraction {test_fraction} leaves no training image out of {n}; lower it.")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])
