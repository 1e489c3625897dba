"""The C heap's policy for the large blocks tensors live in.

glibc's malloc returns a freed block above its mmap threshold (or a heap top above its trim
threshold) to the kernel, so the next activation of that size is fresh memory again, and
every page of it faults on first touch. Training frees and reallocates the same few large
activations every step: on this project's 2-core CPU box, a 20 MB leaky ReLU output costs
17 ms freshly mapped against 3.6 ms reused, and StyleGAN3-T's step, whose upsampled
activations are that size, runs 1.17x faster with the heap kept. PyTorch's CPU allocator
has no cache of its own (its guides recommend preloading jemalloc or tcmalloc instead).
"""

from __future__ import annotations

import ctypes

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MB come from the heap
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GB of freed heap for reuse


def _libc_function(name: str):
    return getattr(ctypes.CDLL(None), name, None)


def keep_freed_memory() -> bool:
    """Make this process's glibc heap keep freed blocks of up to 32 MB for reuse; the
    resident size then stays near its peak. True if applied (a C library without glibc's
    `mallopt`, as on macOS, is left as it is)."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the kernel now (glibc's `malloc_trim`), so that
    the resident size is what is in use: before a peak-memory measurement starts."""
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)
