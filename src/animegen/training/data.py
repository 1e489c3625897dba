"""The training data stream: a seeded order per epoch, cut into global batches, each rank
taking its slice.

Epoch e visits the train split (twice as long with xflip: item N + i is image i mirrored,
see animegen.data.dataset) in the permutation drawn from (seed, e); the last incomplete
batch of an epoch is dropped. The position (epoch, offset) is all a checkpoint needs to
continue the stream exactly, and a K-rank run with global batch B sees the same images
per step as a 1-rank run with B. Rank r takes the global batch's images r, r + K, r + 2K...
(strided, like Objective's random draws), so that the groups of StyleGAN's minibatch-stddev,
strided too, hold the same images on K ranks as on one.

While the model trains on one batch, a background thread gathers the next (into pinned
memory on CUDA, copied without blocking), so the step never waits for the data; the saved
position is always that of the batches handed out.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

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
        self._order = None  # (epoch, its permutation)
        self._ahead: tuple[tuple, Future] | None = None  # ((position, pinned), the batch being gathered)
        self._pool: ThreadPoolExecutor | None = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state(self, state: dict) -> None:
        self.epoch, self.offset, self._order = state["epoch"], state["offset"], None
        self._ahead = None

    def next(self, device: torch.device) -> torch.Tensor:
        """This rank's share of the next global batch: float32 N x 3 x R x R in [-1, 1]."""
        if self.dataset is None:
            raise UserError("this run has no dataset yet; give it one with --data DIR.")
        pin = device.type == "cuda"
        position = self._start_of_batch()
        ahead, self._ahead = self._ahead, None
        batch = ahead[1].result() if ahead is not None and ahead[0] == (position, pin) else self._gather(position, pin)
        self.epoch, self.offset = position[0], position[1] + self.batch
        following = self._start_of_batch()
        self._ahead = ((following, pin), self._prefetcher().submit(self._gather, following, pin))
        return batch.to(device, non_blocking=pin)

    def _start_of_batch(self) -> tuple[int, int]:
        """(epoch, offset) of the next batch: an incomplete batch at an epoch's end is dropped."""
        if self.offset + self.batch > len(self.dataset):
            return self.epoch + 1, 0
        return self.epoch, self.offset

    def _gather(self, position: tuple[int, int], pin: bool) -> torch.Tensor:
        epoch, offset = position
        mine = self._order_of(epoch)[offset + self.rank : offset + self.batch : self.world_size]
        batch = self.dataset.batch(mine)
        return batch.pin_memory() if pin else batch

    def _order_of(self, epoch: int) -> np.ndarray:
        order = self._order  # (epoch, permutation); one tuple, so the two threads never see halves
        if order is None or order[0] != epoch:
            order = self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset)))
        return order[1]

    def _prefetcher(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="animegen-data")
        return self._pool
