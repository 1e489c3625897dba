"""`animegen data info` and `animegen data export`: look inside a prepared dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from animegen.data.store import SPLITS, load_split, read_manifest
from animegen.errors import UserError
from animegen.io import atomic_dir, save_grid
from animegen.settings import check_file_output, check_new_folder

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


def export_split(path: str | os.PathLike, split: str, out: str | os.PathLike) -> int:
    """Write each image of `split` as out/<index>.png (zero-padded, in array order); the folder
    appears only when complete. Returns the number of files."""
    images = load_split(path, split)
    check_new_folder("--out", out)
    width = len(str(max(len(images) - 1, 0)))
    with atomic_dir(out) as tmp:
        for i, image in enumerate(images):
            Image.fromarray(np.asarray(image)).save(tmp / f"{i:0{width}d}.png")
    return len(images)


def _describe_sources(sources: list[str]) -> str:
    if not sources:
        return "none recorded"
    names = [Path(s).name or s for s in sources]
    shown = ", ".join(names[:3])
    return shown if len(names) <= 3 else f"{shown}, ... ({len(names)} in all)"
