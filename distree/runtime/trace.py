"""Where a round goes: timestamps on both sides of every message, and the breakdown read off them.

With `--trace DIR` every rank marks the moments of each sample's path and writes them to
DIR/rank{R}.json when the session ends. All marks are `time.perf_counter()`, which on Linux is
CLOCK_MONOTONIC, one clock for every process of a host: so the marks of different ranks on one
machine compare directly (across hosts they do not, and `breakdown` is for one host).

A round (sample, exit; exit -1 for a local policy's whole sample) runs, for the device whose
message the aggregator filed last (the one the round waited for):

    aggregator  out --> device waiting/arrived --> decoded --> computed --> sent --> aggregator received --> filed

`out` is the aggregator's send of the INPUT to that device (first round) or of its CONTINUE
(`told`, later rounds of a per-exit policy). The aggregator marks `issue` before it encodes a
sample, `out` per device as its INPUT is handed to the link, `received` when the link's
receiving thread got a message, `filed` when the main thread took it from the inbox, `told` per
device as a CONTINUE/STOP is handed to the link, and `answered`. The device marks, under the
round its message starts, `waiting` (it blocked on the receive), `arrived`, `decoded` (its
compute starts), `computed` and `sent` (its message, encoded, is handed to the link). Every mark
is taken before what it names can cause the next one, so on one host no segment is negative.

The segments, per round: `aggregator out` (issue, or the previous round's last filing, to out:
encoding, the decision, the sends before it), `device busy` (out to the device's wait, when it
was still busy), `to device` (to arrived: transfer and wake-up), `device in` (decoding),
`compute`, `device out` (encoding), `to aggregator` (the send, the transfer, the receiving
thread's wake-up), `handoff` (that thread to the main thread); per sample, `aggregator answer`
(last filing to the answer).
"""
import json
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from distree.errors import DistreeError
from distree.runtime.stream import WHOLE

AGGREGATOR = -1  # the device field of the aggregator's marks about the whole sample

# The segments of a sample's path, in order; they add up to answered - issue.
SEGMENTS = ("aggregator out", "device busy", "to device", "device in", "compute", "device out", "to aggregator",
            "handoff", "aggregator answer")


class Mark(NamedTuple):
    """A tuple, so the collector stops tracking it: a session of marks must not make garbage collection slower."""

    event: str
    policy: int
    seq: int  # the sample
    exit: int  # the round's exit (0-based), WHOLE for a local policy
    device: int  # the device it concerns, AGGREGATOR for the sample as a whole
    t: float  # perf_counter seconds


class Trace:
    """The marks of one rank; `write` saves them as DIR/rank{rank}.json."""

    def __init__(self, folder: str, rank: int):
        self.path = Path(folder) / f"rank{rank}.json"
        self.marks: list[Mark] = []

    def mark(self, event: str, policy: int, seq: int, exit: int, device: int, t: float) -> None:
        self.marks.append(Mark(event, policy, seq, exit, device, t))

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps([k._asdict() for k in self.marks]) + "\n")


def check_trace_folder(folder: str) -> None:
    """A DistreeError unless folder is new, or an empty folder: a session's marks never overwrite others."""
    path = Path(folder)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DistreeError(f"--trace {folder}: {'not a folder' if not path.is_dir() else 'not empty'}; "
                           "give a new or empty folder")


def read_marks(folder: str) -> list[Mark]:
    """Every rank's marks in folder."""
    return [Mark(**k) for path in sorted(Path(folder).glob("rank*.json")) for k in json.loads(path.read_text())]


def breakdown(marks: list[Mark]) -> dict:
    """Per policy index: {"samples": S, "total": (S,) seconds issue -> answered, segment: (S,) seconds}.

    Only samples every device of every round answered are broken down (a degraded sample waits
    for a deadline, which is no part of the floor)."""
    at = {}  # (event, policy, seq, exit, device) -> t
    for k in marks:
        at[(k.event, k.policy, k.seq, k.exit, k.device)] = k.t
    rounds = defaultdict(lambda: defaultdict(dict))  # (policy, seq) -> exit -> device -> filed t
    for k in marks:
        if k.event == "filed":
            rounds[(k.policy, k.seq)][k.exit][k.device] = k.t
    out = {}
    for (policy, seq), by_exit in sorted(rounds.items()):
        parts = _sample(at, policy, seq, by_exit)
        if parts is None:
            continue
        entry = out.setdefault(policy, {"samples": 0, "total": [], **{s: [] for s in SEGMENTS}})
        entry["samples"] += 1
        for name, value in parts.items():
            entry[name].append(value)
    return {p: {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in e.items()} for p, e in out.items()}


def _sample(at: dict, policy: int, seq: int, by_exit: dict) -> dict | None:
    """One sample's segments, or None if a mark is missing (a round not every device answered)."""
    issue, answered = at.get(("issue", policy, seq, WHOLE, AGGREGATOR)), at.get(("answered", policy, seq, WHOLE,
                                                                                 AGGREGATOR))
    if issue is None or answered is None:
        return None
    parts = dict.fromkeys(SEGMENTS, 0.0)
    last_filed, previous = issue, None  # previous: the last round's exit
    for exit in sorted(by_exit):
        filed = by_exit[exit]
        device = max(filed, key=filed.get)  # the device the round waited for
        out = at.get(("out", policy, seq, WHOLE, device)) if previous is None else \
            at.get(("told", policy, seq, previous, device))
        d = {e: at.get((e, policy, seq, exit, device)) for e in ("waiting", "arrived", "decoded", "computed", "sent")}
        received = at.get(("received", policy, seq, exit, device))
        if out is None or received is None or None in d.values():
            return None
        ready = max(out, d["waiting"])
        parts["aggregator out"] += out - last_filed
        parts["device busy"] += ready - out
        parts["to device"] += d["arrived"] - ready
        parts["device in"] += d["decoded"] - d["arrived"]
        parts["compute"] += d["computed"] - d["decoded"]
        parts["device out"] += d["sent"] - d["computed"]
        parts["to aggregator"] += received - d["sent"]
        parts["handoff"] += filed[device] - received
        last_filed, previous = filed[device], exit
    parts["aggregator answer"] += answered - last_filed
    parts["total"] = answered - issue
    return parts
