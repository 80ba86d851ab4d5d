"""Injected faults, so the fault handling is tested against real process deaths and stalls.

A fault is written KIND:TARGET@AT[:ARGS]; TARGET is a device index or `agg`, AT counts the
inputs a device has received (or the answers the aggregator has given), from 0, over the
whole session. Kinds:
  kill    the process SIGKILLs itself: no cleanup, sockets closed by the kernel
  freeze  the process SIGSTOPs itself: alive but silent, sockets open, heartbeat stopped
  stall   the device sleeps SECONDS before answering (kill:0@5 takes none, stall:0@5:2 one)
  corrupt the device sends a malformed feature (exit index out of range) for that sample; the
          aggregator (corrupt:agg@AT) sends every device a THRESHOLDS message whose setting index
          is past its path, which the device must reject
  slow    slow:DEVICE@AT:FACTOR[:SECONDS]: from input AT on (for SECONDS, else to the end) the
          device's compute takes FACTOR (>= 1) times as long; it really sleeps (runtime/pace.py);
          a later slow fault of the same device replaces it (slow:1@300:3 slow:1@600:1: inputs 300..599)
  link    link:DEVICE@AT:DELAY_MS[:MBPS]: from input AT on the device's emulated link has this
          delay (and bandwidth; 0 or none: unlimited); its jitter stays as configured
"""
import math
import os
import signal
import time
from dataclasses import dataclass

from distree.errors import DistreeError

DEVICE_KINDS = ("kill", "freeze", "stall", "corrupt", "slow", "link")
AGGREGATOR_KINDS = ("kill", "freeze", "corrupt")
PACE_KINDS = ("slow", "link")  # faults that change a device's pace for a while; the others strike once
AGGREGATOR = "agg"


@dataclass(frozen=True)
class Fault:
    kind: str
    target: object  # device index (int) or AGGREGATOR
    at: int
    seconds: float = 0.0  # stall: how long; slow: how long the slowdown lasts (0: to the end)
    factor: float = 1.0  # slow: compute takes this many times as long
    delay_ms: float = 0.0  # link: the new per-message delay
    mbps: float = 0.0  # link: the new bandwidth (0: unlimited)


def parse_fault(spec: str, num_devices: int) -> Fault:
    """A Fault from KIND:TARGET@AT[:ARGS], or a DistreeError saying what is wrong."""
    try:
        kind, rest = spec.split(":", 1)
        target, rest = rest.split("@", 1)
        at, *args = rest.split(":")
        values = [float(v) for v in args]
        target, at = target if target == AGGREGATOR else int(target), int(at)
    except ValueError:
        raise DistreeError(f"bad fault {spec!r}; write KIND:TARGET@AT[:ARGS], e.g. kill:1@20, stall:0@5:2, "
                           "slow:1@50:3:10 or link:0@100:40:2") from None
    kinds = AGGREGATOR_KINDS if target == AGGREGATOR else DEVICE_KINDS
    if kind not in kinds:
        raise DistreeError(f"fault {spec!r}: kind must be one of {', '.join(kinds)} for this target")
    if target != AGGREGATOR and not 0 <= target < num_devices:
        raise DistreeError(f"fault {spec!r}: device must be in 0..{num_devices - 1} or {AGGREGATOR}")
    if at < 0 or any(not math.isfinite(v) or v < 0 for v in values):
        raise DistreeError(f"fault {spec!r}: AT and every value must be finite and >= 0")
    if kind == "slow":
        if not 1 <= len(values) <= 2 or values[0] < 1:
            raise DistreeError(f"fault {spec!r}: write slow:DEVICE@AT:FACTOR[:SECONDS] with FACTOR >= 1")
        return Fault(kind, target, at, seconds=values[1] if len(values) == 2 else 0.0, factor=values[0])
    if kind == "link":
        if not 1 <= len(values) <= 2:
            raise DistreeError(f"fault {spec!r}: write link:DEVICE@AT:DELAY_MS[:MBPS]")
        return Fault(kind, target, at, delay_ms=values[0], mbps=values[1] if len(values) == 2 else 0.0)
    if len(values) != (kind == "stall") or (kind == "stall" and values[0] <= 0):
        raise DistreeError(f"fault {spec!r}: SECONDS > 0 is given for (and only for) stall")
    return Fault(kind, target, at, seconds=values[0] if values else 0.0)


def strike(fault: Fault) -> bool:
    """Carry out fault in this process; True if the caller must corrupt its next message."""
    if fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault.kind == "freeze":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif fault.kind == "stall":
        time.sleep(fault.seconds)
    return fault.kind == "corrupt"
