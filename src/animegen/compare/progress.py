"""The comparison's progress: a line per phase, with the time so far and an ETA."""

from __future__ import annotations

import statistics
import time


class Progress:
    """One line per phase with an ETA for the whole comparison: for each kind of phase
    (training, evaluating, writing) its mean time so far, or the mean of all phases while
    none of that kind has finished, times the phases of that kind left. `guess`: seconds
    per phase of a kind before one has finished (a --minutes budget's training)."""

    def __init__(self, phases: dict[str, int], echo, guess: dict[str, float] | None = None):
        self.left, self.took, self.echo = dict(phases), {kind: [] for kind in phases}, echo
        self.guess = guess or {}
        self.total, self.done = sum(phases.values()), 0
        self.start = self.mark = time.perf_counter()
        self.kind, self.timed = None, True

    def line(self, kind: str | None, text: str, timed: bool = True) -> None:
        """Start a phase of `kind` (None: the end); `timed=False`: one that does no work (a
        run already trained), left out of the means."""
        now = time.perf_counter()
        if self.kind:
            self.done += 1
            if self.timed:
                self.took[self.kind].append(now - self.mark)
        self.kind, self.mark, self.timed = kind, now, timed
        if kind:
            self.left[kind] -= 1
        everything = [t for times in self.took.values() for t in times]
        eta = ""
        if (everything or self.guess) and (sum(self.left.values()) or kind):
            mean = {k: statistics.fmean(times) if times else self.guess.get(k, statistics.fmean(everything or [0]))
                    for k, times in self.took.items()}
            seconds = sum(mean[k] * n for k, n in self.left.items()) + (mean[kind] if kind and timed else 0)
            eta = f"ETA {_minutes(max(seconds, 0))}"
        self.echo(f"[compare {self.done}/{self.total}, {_minutes(now - self.start)}] {text}  {eta}".rstrip())


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"
