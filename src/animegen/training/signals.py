"""Ctrl-C and SIGTERM while training: a request to stop, not an exception in the middle of
an optimizer step. The first signal is recorded, and the loop stops after the current step
with a checkpoint; inside a block that can be given up safely (a sample grid, an FID
snapshot) it raises `Abandon` at once, since those take minutes. A second signal exits at
once: every write is atomic, so the folder keeps its last complete checkpoint."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable


class Abandon(Exception):
    """Raised by the handler inside an `abandonable` block."""


class StopSignals:
    """SIGINT and SIGTERM as requests to stop, while `installed`. `received`: the first
    signal's number, or None; `last_checkpoint()` gives the step the run resumes from, for
    the line a second signal prints."""

    def __init__(self, last_checkpoint: Callable[[], int | None]):
        self.received: int | None = None
        self._last_checkpoint = last_checkpoint
        self._abandonable = False  # inside a grid or snapshot, which a signal gives up at once

    @contextlib.contextmanager
    def installed(self):
        """The handler in place of the previous ones (only the main thread receives signals)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def abandonable(self):
        """A signal during this block, or one received before it, raises `Abandon`."""
        self._abandonable = True
        try:
            if self.received is not None:
                raise Abandon
            yield
        finally:
            self._abandonable = False

    def _request_stop(self, signum, frame):
        if self.received is not None:
            os.write(2, f"\n{signal.Signals(signum).name} again: exiting now; the run resumes from its last "
                        f"checkpoint (step {self._last_checkpoint()}).\n".encode())
            os._exit(128 + signum)
        self.received = signum
        if self._abandonable:
            raise Abandon
