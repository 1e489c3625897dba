"""A prepared dataset split as a torch Dataset of float images in [-1, 1].

x-flip augmentation follows StyleGAN2-ADA: with `xflip=True` the dataset is twice as long
and item N + i is the mirror image of item i. Which images are flipped is then decided by
the sampler's indices alone, with no random state inside the dataset, so a training run
that restores its sampler position resumes on exactly the same batches; a uniform
sampler sees each image flipped half of the time.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from animegen.data.store import load_split, read_manifest


class ImageDataset(torch.utils.data.Dataset):
    """Items are float32 tensors 3 x R x R, x / 127.5 - 1 of the stored uint8 pixels."""

    def __init__(self, path: str | os.PathLike, split: str = "train", xflip: bool = False):
        self.path, self.split, self.xflip = path, split, xflip
        manifest = read_manifest(path)
        self._images = load_split(path, split)
        self.num_images = len(self._images)
        self.labels = manifest.get("labels", {}).get(split)  # per stored image (unflipped), or None

    @property
    def images(self) -> np.ndarray:
        """The split's uint8 N x R x R x 3 array, memory-mapped; re-opened lazily in each worker."""
        if self._images is None:
            self._images = load_split(self.path, self.split)
        return self._images

    @property
    def resolution(self) -> int:
        return self.images.shape[1]

    def __len__(self) -> int:
        return 2 * self.num_images if self.xflip else self.num_images

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        image = self.images[index % self.num_images]
        if index >= self.num_images:
            image = image[:, ::-1]
        x = torch.from_numpy(np.array(image.transpose(2, 0, 1), dtype=np.float32))
        return x / 127.5 - 1

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """Items `indices` stacked (N x 3 x R x R), gathered in one read: equal to stacking them."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and not (-len(self) <= indices.min() and indices.max() < len(self)):
            raise IndexError(f"indices out of range for {len(self)} items")
        indices %= len(self)
        images = self.images[indices % self.num_images]  # a copy: fancy indexing of the memmap
        flipped = indices >= self.num_images
        images[flipped] = images[flipped, :, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32))
        return x / 127.5 - 1

    def __getstate__(self):
        # A pickled np.memmap carries all its pixels; workers re-open the file instead.
        return {**self.__dict__, "_images": None}
