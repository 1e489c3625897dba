"""`animegen data prepare`: folders, zips and image files -> a clean, split, reproducible dataset.

Per input file (in worker processes):
  read the bytes (sha256 recorded) -> decode to RGB (data/images.py: EXIF orientation, alpha on
  white, 16-bit scaling, first frame, bomb refusal) -> skip if the shorter side < min_size ->
  sha256 of the decoded pixels -> make square: center crop, or pad with white (centered) ->
  resize to R x R with Pillow's Lanczos filter, the one filter used (antialiased when shrinking,
  also used when enlarging; not applied when the square is already R x R).
Then, in the main process:
  - exact duplicates (same decoded pixels) are kept once: the copy whose source label sorts first;
  - kept images are ordered by the sha256 of their decoded pixels, so neither the order nor the
    names of the sources change anything;
  - store.split_indices sends round(test_fraction * kept) of them, chosen by a permutation
    seeded with `seed`, to `test` and the rest to `train`; each split keeps the hash order.
So the same pixels, options and seed give byte-identical arrays (with the same Pillow version,
whose Lanczos implementation is recorded in the manifest).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import multiprocessing
import os
import sys
from typing import NamedTuple

import numpy as np
import PIL
from PIL import Image
from tqdm import tqdm

from animegen.data.images import MAX_PIXELS, WHITE, BadImage, ImageFile, decode_rgb, list_files, read_files
from animegen.data.limits import MAX_MIN_SIZE, MAX_WORKERS, MIN_RESOLUTION
from animegen.data.store import SPLITS, read_manifest, split_indices, write_dataset
from animegen.errors import UserError
from animegen.settings import MAX_RESOLUTION, MAX_SEED, check_fraction, check_int, check_new_folder

RESIZE_FILTER = Image.Resampling.LANCZOS
CROP_MODES = ("center", "pad")
CHUNK = 1024  # files per worker task; a task never spans two zips and opens its zip once (~0.1 s)
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)  # decoding scales to a few processes; more crowd a shared machine


class _Result(NamedTuple):
    label: str
    sha256: str | None = None  # of the file bytes
    pixels_sha256: str | None = None  # of the decoded RGB pixels and their shape
    image: np.ndarray | None = None  # R x R x 3 uint8
    reason: str | None = None  # why the file was skipped


def prepare_dataset(sources: list[str], out, resolution: int, test_fraction: float = 0.2, seed: int = 0,
                    crop: str = "center", min_size: int | None = None, progress: bool = True,
                    workers: int | None = None) -> dict:
    """Prepare `sources` into the dataset folder `out` (see the module docstring); returns the manifest.

    `min_size` defaults to resolution // 2; `workers` (processes) defaults to DEFAULT_WORKERS.
    Raises UserError, writing nothing, on bad options, missing sources or no usable image.
    """
    workers = DEFAULT_WORKERS if workers is None else workers
    _check_options(sources, out, resolution, test_fraction, seed, crop, min_size, workers)
    min_size = resolution // 2 if min_size is None else min_size
    files = list_files(sources)
    if not files:
        raise UserError(f"no files found in {', '.join(map(str, sources))}.")
    results = _prepare_all(files, resolution, crop, min_size, workers, progress)

    kept, duplicates = _deduplicate([r for r in results if r.reason is None])
    skipped = sorted(({"path": r.label, "reason": r.reason} for r in results if r.reason), key=lambda s: s["path"])
    if not kept:
        raise UserError(f"no usable image among the {len(files)} files found "
                        f"({skipped[0]['path']}: {skipped[0]['reason']}).")
    splits = dict(zip(SPLITS, split_indices(len(kept), test_fraction, seed)))

    images = [{"source": kept[i].label, "sha256": kept[i].sha256, "split": name, "index": j}
              for name, idx in splits.items() for j, i in enumerate(idx)]
    manifest = {
        "kind": "prepared",
        "sources": sorted(map(str, sources)),
        "resolution": resolution,
        "seed": seed,
        "test_fraction": test_fraction,
        "crop": crop,
        "background": "white (transparency and padding)",
        "resize_filter": f"lanczos (Pillow {PIL.__version__} Image.Resampling.LANCZOS)",
        "min_size": min_size,
        "max_pixels": MAX_PIXELS,
        "order": "by sha256 of decoded pixels; a permutation seeded with `seed` picks the test images",
        "counts": {"found": len(files), "kept": len(kept), "train": len(splits["train"]),
                   "test": len(splits["test"]), "duplicates": len(duplicates), "skipped": len(skipped)},
        "images": images,
        "duplicates": duplicates,
        "skipped": skipped,
    }
    arrays = {name: _stack([kept[i].image for i in idx], resolution) for name, idx in splits.items()}
    return read_manifest(write_dataset(out, arrays["train"], arrays["test"], manifest))  # as written


def square_resize(rgb: np.ndarray, resolution: int, crop: str) -> np.ndarray:
    """H x W x 3 uint8 -> R x R x 3 uint8: center crop or white padding, then the Lanczos resize."""
    h, w, _ = rgb.shape
    im = Image.fromarray(rgb)
    if crop == "center":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
    else:
        side = max(w, h)
        square = Image.new("RGB", (side, side), WHITE)
        square.paste(im, ((side - w) // 2, (side - h) // 2))
        im = square
    return np.asarray(im.resize((resolution, resolution), RESIZE_FILTER))  # a plain copy when already R x R


def _check_options(sources, out, resolution, test_fraction, seed, crop, min_size, workers):
    if not sources:
        raise UserError("give at least one source: a folder, a zip file or an image file.")
    check_int("--resolution", resolution, MIN_RESOLUTION, MAX_RESOLUTION)
    check_fraction("--test-fraction", test_fraction)
    check_int("--seed", seed, 0, MAX_SEED)
    if crop not in CROP_MODES:
        raise UserError(f"--crop must be one of {', '.join(CROP_MODES)}, got {crop!r}.")
    if min_size is not None:
        check_int("--min-size", min_size, 1, MAX_MIN_SIZE)
    check_int("--workers", workers, 1, MAX_WORKERS)
    check_new_folder("--out", out)


def _prepare_all(files: list[ImageFile], resolution, crop, min_size, workers, progress) -> list[_Result]:
    """_prepare_chunk over chunks of files, in `workers` processes when there is more than one chunk.

    Results come back in input order whatever the number of processes (imap keeps order)."""
    chunks = _chunks(files)
    task = functools.partial(_prepare_chunk, resolution=resolution, crop=crop, min_size=min_size)
    results = []
    with contextlib.ExitStack() as stack:
        imap = map
        if workers > 1 and len(chunks) > 1:  # started before tqdm's thread, so no thread is forked
            imap = stack.enter_context(multiprocessing.Pool(min(workers, len(chunks)))).imap
        # leave=False: the bar is cleared, so a failure ends with its one error line and nothing else
        bar = stack.enter_context(tqdm(total=len(files), unit="img", desc="prepare", file=sys.stderr,
                                       disable=not progress, leave=False))
        for chunk_results in imap(task, chunks):
            results += chunk_results
            bar.update(len(chunk_results))
    return results


def _chunks(files: list[ImageFile]) -> list[list[ImageFile]]:
    """Runs of at most CHUNK files from the same archive (or all from disk)."""
    chunks = []
    for f in files:
        if chunks and len(chunks[-1]) < CHUNK and chunks[-1][-1].archive == f.archive:
            chunks[-1].append(f)
        else:
            chunks.append([f])
    return chunks


def _prepare_chunk(files: list[ImageFile], resolution: int, crop: str, min_size: int) -> list[_Result]:
    return [_prepare_one(f.label, data, resolution, crop, min_size) for f, data in read_files(files)]


def _prepare_one(label: str, data: bytes | BadImage, resolution: int, crop: str, min_size: int) -> _Result:
    try:
        if isinstance(data, BadImage):
            raise data
        rgb = decode_large_enough(data, min_size)
    except BadImage as e:
        return _Result(label, reason=str(e))
    h, w, _ = rgb.shape
    pixels = hashlib.sha256(f"{h}x{w}:".encode() + rgb.tobytes()).hexdigest()
    return _Result(label, hashlib.sha256(data).hexdigest(), pixels, square_resize(rgb, resolution, crop))


def decode_large_enough(data: bytes, min_size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """`decode_rgb`, and BadImage when the shorter side is below `min_size` (also used by `project`)."""
    rgb = decode_rgb(data, max_pixels)
    h, w, _ = rgb.shape
    if min(h, w) < min_size:
        raise BadImage(f"too small: {w}x{h}, shorter side below the minimum of {min_size} pixels")
    return rgb


def _deduplicate(usable: list[_Result]) -> tuple[list[_Result], list[dict]]:
    """Keep one image per distinct decoded pixels, ordered by their hash; list the dropped copies."""
    kept, duplicates = [], []
    for r in sorted(usable, key=lambda r: (r.pixels_sha256, r.label)):
        if kept and kept[-1].pixels_sha256 == r.pixels_sha256:
            duplicates.append({"source": r.label, "duplicate_of": kept[-1].label})
        else:
            kept.append(r)
    return kept, duplicates


def _stack(images: list[np.ndarray], resolution: int) -> np.ndarray:
    return np.stack(images) if images else np.zeros((0, resolution, resolution, 3), np.uint8)
