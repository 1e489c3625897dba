"""The training data stream: a seeded order per epoch, cut into global batches, each rank
taking its slice.

Epoch e visits the train split in the permutation drawn from (seed, e), with flips drawn
alongside when xflip is on; the last incomplete batch of an epoch is dropped. The position
(epoch, offset) is all a checkpoint needs to continue the stream exactly, and a K-rank run
with global batch B sees the same images per step as a 1-rank run with B.
"""

from __future__ import annotations

import numpy as np
import torch

from animegen.data.store import load_split
from animegen.errors import UserError


class TrainStream:
    def __init__(self, path: str, batch: int, seed: int, xflip: bool = False, rank: int = 0, world_size: int = 1):
        if batch % world_size:
            raise UserError(f"the global batch {batch} does not divide among {world_size} processes.")
        # The splits are small (27k faces at 64 px are 340 MB), so they live in memory.
        self.images = torch.from_numpy(np.array(load_split(path, "train")))
        if len(self.images) < batch:
            raise UserError(f"{path} has {len(self.images)} training images, fewer than the batch of {batch}.")
        self.batch, self.seed, self.xflip = batch, seed, xflip
        self.rank, self.world_size = rank, world_size
        self.epoch, self.offset = 0, 0
        self._order = None

    @property
    def resolution(self) -> int:
        return self.images.shape[1]

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state(self, state: dict) -> None:
        self.epoch, self.offset, self._order = state["epoch"], state["offset"], None

    def next(self, device: torch.device) -> torch.Tensor:
        """This rank's share of the next global batch: float32 N x 3 x R x R in [-1, 1]."""
        if self.offset + self.batch > len(self.images):
            self.epoch, self.offset, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._order = self._epoch_order(self.epoch)
        local = self.batch // self.world_size
        start = self.offset + self.rank * local
        indices, flips = self._order[0][start : start + local], self._order[1][start : start + local]
        self.offset += self.batch
        x = self.images[indices].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        return torch.where(flips.to(device)[:, None, None, None], x.flip(3), x)

    def _epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, epoch])
        order = torch.from_numpy(rng.permutation(len(self.images)))
        flips = torch.from_numpy(rng.random(len(self.images)) < 0.5) & self.xflip
        return order, flips
