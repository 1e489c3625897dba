"""Image sets to measure: a folder of images (recursive), a zip file, or a prepared dataset's split.

Each source yields uint8 RGB batches in a fixed order (sorted file names; the split's
order) and names its content by a hash, which keys the feature cache. `num` keeps the
first `num` images. Files decode by the project's one set of rules (`data/images.py`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from animegen.data.images import BadImage, ImageFile, decode_rgb, list_files, read_files
from animegen.data.limits import MAX_IMAGES
from animegen.data.store import is_dataset, load_split, read_manifest
from animegen.errors import UserError
from animegen.settings import check_int

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class ImageSource:
    label: str  # how results name it
    count: int
    content: Callable[[], str]  # sha256 naming exactly these images (with `split` and `count`)
    split: str | None
    batches: Callable[[int], Iterator[np.ndarray | list[np.ndarray]]]  # batch_size -> uint8 batches
    whole: int  # images the content hash names: the split's, of which these are the first `count`


def open_source(path: str | os.PathLike, split: str = "test", num: int | None = None) -> ImageSource:
    if num is not None:
        check_int("--num", num, 1, MAX_IMAGES)
    if is_dataset(path):
        return _dataset_source(Path(path), split, num)
    if not Path(path).exists():
        raise UserError(f"{path} does not exist (expected an image folder, a zip file or a prepared dataset).")
    return _files_source(Path(path), num)


def _dataset_source(path: Path, split: str, num: int | None) -> ImageSource:
    split_images = load_split(path, split)
    images = split_images[:num]
    if len(images) == 0:
        raise UserError(f"the {split} split of {path} is empty.")
    content_hash = read_manifest(path).get("content_hash")
    if not content_hash:  # the feature cache is keyed by it
        raise UserError(f"{path}'s manifest.json has no content_hash; prepare the dataset again.")

    def batches(batch_size):
        for start in range(0, len(images), batch_size):
            yield np.array(images[start : start + batch_size])  # a copy: the memory map is read-only

    return ImageSource(f"{path} ({split} split)", len(images), lambda: content_hash, split, batches, len(split_images))


def _files_source(path: Path, num: int | None) -> ImageSource:
    files = sorted((f for f in list_files([str(path)]) if f.name.lower().endswith(IMAGE_SUFFIXES)),
                   key=lambda f: f.name)[:num]
    if not files:
        raise UserError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}).")

    def content():
        h = hashlib.sha256()
        for f, data in _read(files):
            name = f.name if f.archive else os.path.relpath(f.name, path)  # moving the folder changes nothing
            h.update(f"{len(name)}:{name}:{len(data)}:".encode())
            h.update(data)
        return h.hexdigest()

    def batches(batch_size):
        batch = []
        for f, data in _read(files):
            try:
                batch.append(decode_rgb(data))
            except BadImage as e:
                raise UserError(f"cannot use {f.label}: {e}.") from None
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    return ImageSource(str(path), len(files), content, None, batches, len(files))  # the hash names just these


def _read(files: list[ImageFile]) -> Iterator[tuple[ImageFile, bytes]]:
    for f, data in read_files(files):
        if isinstance(data, BadImage):
            raise UserError(f"cannot use {f.label}: {data}.")
        yield f, data
