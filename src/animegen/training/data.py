"""The training data stream: a seeded order per epoch, cut into global batches, each rank
taking its slice.

Epoch e visits the train split (twice as long with xflip: item N + i is image i mirrored,
see animegen.data.dataset) in the permutation drawn from (seed, e); the last incomplete
batch of an epoch is dropped. The position (epoch, offset) is all a checkpoint needs to
continue the stream exactly, and a K-rank run with global batch B sees the same images
per step as a 1-rank run with B. Rank r takes the global batch's images r, r + K, r + 2K...
(strided, like Objective's random draws), so that the groups of StyleGAN's minibatch-stddev,
strided too, hold the same images on K ranks as on one.
"""

from __future__ import annotations

import numpy as np
import torch

from animegen.data.dataset import ImageDataset
from animegen.errors import UserError


class TrainStream:
    """`path` None: a run without a dataset yet (an import, `animegen import` without --data);
    its position can be saved, and asking it for a batch says how to give it one."""

    def __init__(self, path: str | None, batch: int, seed: int, xflip: bool = False, rank: int = 0,
                 world_size: int = 1):
        if batch % world_size:
            raise UserError(f"the global batch {batch} does not divide among {world_size} processes.")
        self.dataset = ImageDataset(path, "train", xflip=xflip) if path is not None else None
        if self.dataset is not None and len(self.dataset) < batch:
            raise UserError(f"{path} has {self.dataset.num_images} training images, too few for a batch of {batch}.")
        self.batch, self.seed = batch, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.offset = 0, 0
        self._order = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state(self, state: dict) -> None:
        self.epoch, self.offset, self._order = state["epoch"], state["offset"], None

    def next(self, device: torch.device) -> torch.Tensor:
        """This rank's share of the next global batch: float32 N x 3 x R x R in [-1, 1]."""
        if self.dataset is None:
            raise UserError("this run has no dataset yet; give it one with --data DIR.")
        if self.offset + self.batch > len(self.dataset):
            self.epoch, self.offset, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset))
        mine = self._order[self.offset + self.rank : self.offset + self.batch : self.world_size]
        self.offset += self.batch
        return torch.stack([self.dataset[int(i)] for i in mine]).to(device)
