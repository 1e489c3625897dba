"""Memory in training: the peak of the training steps, measured apart from grids and
snapshots; and running out of it, said in one line."""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

import torch

from animegen import heap
from animegen.errors import UserError


class PeakMemory:
    """The peak memory of training steps, with grids and FID snapshots (the Inception network)
    measured apart: the peak is read and reset around each of them. CUDA: the allocator's
    peak; CPU on Linux: the process's peak resident size (VmHWM, reset through
    /proc/self/clear_refs); elsewhere the lifetime peak, which includes everything. Memory
    a snapshot keeps (the Inception weights stay loaded) counts towards later steps."""

    def __init__(self, device: torch.device):
        self.device = device
        self.training = self.apart_mb = 0.0

    def training_mb(self) -> float:
        return max(self.training, self._peak_mb())

    @contextlib.contextmanager
    def apart(self):
        self.training = self.training_mb()
        self.reset()
        try:
            yield
        finally:
            self.apart_mb = max(self.apart_mb, self._peak_mb())
            self.reset()

    def _peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            status = Path("/proc/self/status").read_text()
            return int(status.split("VmHWM:")[1].split()[0]) / 1024
        except (OSError, IndexError, ValueError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def reset(self) -> None:
        """Forget the peak so far (in this process: earlier work, say another run's)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        heap.release_freed_memory()  # the heap keeps freed blocks (animegen.heap): not in use
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")


@contextlib.contextmanager
def out_of_memory_as_user_error():
    """A failed allocation (on the GPU or the host) as one UserError saying what to lower."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as e:
        raise UserError(f"out of memory ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                        "lower --set batch=... or the model's widths.") from None
    except RuntimeError as e:
        if "can't allocate memory" not in str(e) and "out of memory" not in str(e):
            raise
        raise UserError(f"out of memory ({str(e).splitlines()[0]}); lower --set batch=... or the model's widths.") \
            from None
