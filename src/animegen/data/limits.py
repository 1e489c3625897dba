"""The accepted range of every number the data and metric commands take, in one place, and
the checks that refuse anything else with one UserError naming the option and its range.

The library functions call these checks themselves, so a library caller is refused
exactly as the command line is, and always before any work or any write.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

from animegen.data.images import MAX_PIXELS
from animegen.errors import UserError

MIN_RESOLUTION = 4  # the models count their layers as log2(resolution // 4)
MIN_SYNTH_RESOLUTION = 8  # a smaller drawn face is a few blots
MAX_IMAGES = 10**7  # data synth --count and fid/kid --num
MAX_DATASET_BYTES = 64 * 2**30  # data synth holds all its images in memory
MAX_MIN_SIZE = math.isqrt(MAX_PIXELS)  # the shorter side of the largest image decode_rgb accepts
MAX_WORKERS = 256
MAX_BATCH_SIZE = 1024  # Inception runs at 299 x 299: larger batches only run out of memory


def check_int(option: str, value, low: int, high: int) -> int:
    """`value` if it is an integer in low..high; otherwise a UserError naming `option`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise UserError(f"{option} must be an integer from {low} to {high}, got {value!r}.")
    return int(value)


def check_fraction(option: str, value) -> float:
    """`value` if it is a number in [0, 1); otherwise a UserError naming `option`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise UserError(f"{option} must be a number from 0 up to (not including) 1, got {value!r}.")
    return float(value)


def check_new_folder(option: str, path: str | os.PathLike) -> None:
    """`path` must not exist yet and must be creatable, so a long job cannot fail at its last step."""
    if Path(path).exists():
        raise UserError(f"{path} already exists; choose another {option} or delete it first.")
    _check_creatable(option, path)


def check_file_output(option: str, path: str | os.PathLike) -> None:
    """`path` may be replaced by a file: it is not a folder, and its folder is creatable."""
    if Path(path).is_dir():
        raise UserError(f"{option} {path} is a folder; give the path of a file.")
    _check_creatable(option, path)


def _check_creatable(option: str, path: str | os.PathLike) -> None:
    existing = Path(path).absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {option} {path}: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {option} {path}: no permission to write in {existing}.")
