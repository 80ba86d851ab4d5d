"""Network emulation: a per-link delay, bandwidth and jitter, paid by sleeping before a send.

On loopback a message costs microseconds; an edge device's radio costs milliseconds. Sleeping
in the link's sender thread (not the device's compute thread) emulates a link that transmits
while the device computes, and keeps messages in order as a real link does. It emulates the
device -> aggregator direction, the only one the simulated latency model counts.
"""
import random
from dataclasses import dataclass

from distree.errors import DistreeError


@dataclass(frozen=True)
class LinkModel:
    delay_ms: float = 0.0  # per-message latency l_i
    bandwidth_mbps: float = 0.0  # b_i in Mbit/s; 0 means unlimited
    jitter_ms: float = 0.0  # each message's delay varies uniformly by +-jitter_ms (never below 0)

    @property
    def active(self) -> bool:
        return self.delay_ms > 0 or self.bandwidth_mbps > 0 or self.jitter_ms > 0

    def seconds(self, nbytes: int, rng: random.Random) -> float:
        """How long a message of nbytes takes on this link."""
        transfer = nbytes * 8 / (self.bandwidth_mbps * 1e6) if self.bandwidth_mbps > 0 else 0.0
        jitter = rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms > 0 else 0.0
        return max(0.0, (self.delay_ms + jitter) / 1e3 + transfer)


def per_device(values: str, n: int, what: str) -> list[float]:
    """One value for every device from "v" (all the same) or "v0,v1,...,v{n-1}"."""
    try:
        parsed = [float(v) for v in str(values).split(",")]
    except ValueError:
        raise DistreeError(f"{what} must be a number or {n} comma-separated numbers, got {values!r}") from None
    if len(parsed) == 1:
        parsed *= n
    if len(parsed) != n or any(v < 0 for v in parsed):
        raise DistreeError(f"{what} needs one value or {n} values, all >= 0, got {values!r}")
    return parsed


def link_models(delay_ms: str, bandwidth_mbps: str, jitter_ms: str, n: int) -> list[LinkModel]:
    """The N device links from the command-line strings."""
    delays = per_device(delay_ms, n, "--link-delay-ms")
    rates = per_device(bandwidth_mbps, n, "--link-mbps")
    jitters = per_device(jitter_ms, n, "--link-jitter-ms")
    return [LinkModel(d, b, j) for d, b, j in zip(delays, rates, jitters)]
