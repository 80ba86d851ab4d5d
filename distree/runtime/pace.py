"""A device's pace under `slow` and `link` faults: how much longer it computes, which link it has.

A slowed device really spends the time: after each stretch of compute it sleeps (FACTOR - 1)
times what that stretch took. A stretch is a local policy's walk to its exit (the sum of its
stages' measured times) or a per-exit policy's stages between two decisions, so a sample that
exits earlier computes fewer stages and sleeps less, as on a device that is really slower.
The time is measured on the host after the result is read back, so on a GPU it is the whole
stage, not the kernel launches.
"""
import time
from dataclasses import replace

from distree.runtime.faults import PACE_KINDS, Fault
from distree.runtime.netem import LinkModel


class Pace:
    """The slow and link faults of one device, applied by the input count they start at."""

    def __init__(self, faults: list[Fault], index: int, link: LinkModel):
        self.faults = sorted((f for f in faults if f.kind in PACE_KINDS and f.target == index), key=lambda f: f.at)
        self.link = link
        self.factor = 1.0
        self._slow_until = None  # perf_counter time the running slowdown ends; None: none or to the end

    def on_input(self, received: int) -> LinkModel:
        """Start the faults due at input `received` (0-based); the link model from now on."""
        now = time.perf_counter()
        if self._slow_until is not None and now >= self._slow_until:
            self.factor, self._slow_until = 1.0, None
        for f in self.faults:
            if f.at != received:
                continue
            if f.kind == "slow":
                self.factor, self._slow_until = f.factor, now + f.seconds if f.seconds > 0 else None
            else:
                self.link = replace(self.link, delay_ms=f.delay_ms, bandwidth_mbps=f.mbps)
        return self.link

    def spend(self, since: float) -> None:
        """Sleep the slowdown's share of the compute that began at perf_counter time `since`."""
        if self.factor > 1:
            time.sleep((self.factor - 1) * (time.perf_counter() - since))
