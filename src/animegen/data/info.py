"""`animegen data info` and `animegen data export`: look inside a prepared dataset."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from animegen.data.store import SPLITS, load_split, read_manifest
from animegen.errors import UserError
from animegen.io import atomic_dir, save_grid
from animegen.settings import check_file_output, check_int, check_new_folder

GRID_IMAGES = 64
GRID_COLUMNS = 8


def default_grid_path(path: str | os.PathLike) -> Path:
    """DATASET-samples.png beside the dataset folder, so that inspecting never changes the dataset."""
    p = Path(path).resolve()
    return p.parent / f"{p.name}-samples.png"


def dataset_info(path: str | os.PathLike, grid_path: str | os.PathLike | None = None) -> dict:
    """Counts, resolution and provenance of a prepared dataset; writes a grid of its first
    GRID_IMAGES images (train first, then test) to `grid_path` [default: default_grid_path]."""
    manifest = read_manifest(path)
    arrays = {name: load_split(path, name) for name in SPLITS}
    grid_path = grid_path or default_grid_path(path)
    check_file_output("--grid", grid_path)
    counts = manifest.get("counts", {})
    for name, arr in arrays.items():
        if name in counts and counts[name] != len(arr):
            raise UserError(f"{path} is inconsistent: manifest.json counts {counts[name]} {name} images "
                            f"but {name}.npy holds {len(arr)}; prepare it again.")
    info = {
        "path": str(path),
        "kind": manifest.get("kind", "unknown"),
        "resolution": arrays["train"].shape[1],
        "train": len(arrays["train"]),
        "test": len(arrays["test"]),
        **{key: counts[key] for key in ("found", "duplicates", "skipped") if key in counts},
        "seed": manifest.get("seed"),
        "sources": _describe_sources(manifest.get("sources", [])),
        "content_hash": manifest.get("content_hash"),
    }
    samples = np.concatenate([arrays["train"][:GRID_IMAGES], arrays["test"][:GRID_IMAGES]])[:GRID_IMAGES]
    if len(samples):
        info["grid"] = str(save_grid(samples, grid_path, columns=GRID_COLUMNS))
    return info


def export_split(path: str | os.PathLike, split: str, out: str | os.PathLike, count: int | None = None,
                 indices: str | None = None) -> int:
    """Write images of `split` as out/<index>.png (zero-padded, the index in the split): all,
    the first `count`, or those `indices` names ("0,5,10-19"); the folder appears only when
    complete. Returns the number of files."""
    images = load_split(path, split)
    chosen = _chosen(len(images), count, indices)
    check_new_folder("--out", out)
    width = len(str(max(len(images) - 1, 0)))
    with atomic_dir(out) as tmp:
        for i in chosen:
            Image.fromarray(np.asarray(images[i])).save(tmp / f"{i:0{width}d}.png")
    return len(chosen)


def _chosen(size: int, count: int | None, indices: str | None) -> list[int]:
    """The indices of a split of `size` images that `--count` or `--indices` pick (default: all)."""
    if count is not None and indices is not None:
        raise UserError("give --count or --indices, not both.")
    if count is not None:
        return list(range(check_int("--count", count, 1, size)))
    if indices is None:
        return list(range(size))
    chosen = []
    for part in indices.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        first, last = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (1, 0)
        if not first <= last < size:
            raise UserError(f"--indices {indices!r}: give indices or ranges A-B from 0 to {size - 1}, e.g. 0,5,10-19.")
        chosen += [i for i in range(first, last + 1) if i not in chosen]
    return chosen


def _describe_sources(sources: list[str]) -> str:
    if not sources:
        return "none recorded"
    names = [Path(s).name or s for s in sources]
    shown = ", ".join(names[:3])
    return shown if len(names) <= 3 else f"{shown}, ... ({len(names)} in all)"
