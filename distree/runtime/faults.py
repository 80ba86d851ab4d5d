"""Injected faults, so the fault handling is tested against real process deaths and stalls.

A fault is written KIND:TARGET@AT[:SECONDS]; TARGET is a device index or `agg`, AT counts the
inputs a device has received (or the answers the aggregator has given), from 0, over the
whole session. Kinds:
  kill    the process SIGKILLs itself: no cleanup, sockets closed by the kernel
  freeze  the process SIGSTOPs itself: alive but silent, sockets open, heartbeat stopped
  stall   the device sleeps SECONDS before answering; its heartbeat keeps beating
  corrupt the device sends a malformed feature (exit index out of range) for that sample
"""
import os
import signal
import time
from dataclasses import dataclass

from distree.errors import DistreeError

DEVICE_KINDS = ("kill", "freeze", "stall", "corrupt")
AGGREGATOR_KINDS = ("kill", "freeze")
AGGREGATOR = "agg"


@dataclass(frozen=True)
class Fault:
    kind: str
    target: object  # device index (int) or AGGREGATOR
    at: int
    seconds: float = 0.0


def parse_fault(spec: str, num_devices: int) -> Fault:
    """A Fault from KIND:TARGET@AT[:SECONDS], or a DistreeError saying what is wrong."""
    try:
        kind, rest = spec.split(":", 1)
        target, rest = rest.split("@", 1)
        at, _, seconds = rest.partition(":")
        fault = Fault(kind, target if target == AGGREGATOR else int(target), int(at), float(seconds or 0))
    except ValueError:
        raise DistreeError(f"bad fault {spec!r}; write KIND:TARGET@AT[:SECONDS], e.g. kill:1@20 or stall:0@5:2") \
            from None
    kinds = AGGREGATOR_KINDS if fault.target == AGGREGATOR else DEVICE_KINDS
    if fault.kind not in kinds:
        raise DistreeError(f"fault {spec!r}: kind must be one of {', '.join(kinds)} for this target")
    if fault.target != AGGREGATOR and not 0 <= fault.target < num_devices:
        raise DistreeError(f"fault {spec!r}: device must be in 0..{num_devices - 1} or {AGGREGATOR}")
    if fault.at < 0 or fault.seconds < 0 or (fault.kind == "stall") != (fault.seconds > 0):
        raise DistreeError(f"fault {spec!r}: AT must be >= 0, and SECONDS > 0 is given for (and only for) stall")
    return fault


def strike(fault: Fault) -> bool:
    """Carry out fault in this process; True if the caller must corrupt its next message."""
    if fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault.kind == "freeze":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif fault.kind == "stall":
        time.sleep(fault.seconds)
    return fault.kind == "corrupt"
