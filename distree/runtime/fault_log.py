"""The aggregator's side of injected faults (runtime/faults.py): its own, and when the devices' began.

The aggregator's own faults strike at a count of answers; a device's slow and link faults strike
inside the device at a count of inputs, so the aggregator notes when it sent each device's input
AT, and from those times gives the report each fault's window of samples.
"""
from distree.runtime.faults import AGGREGATOR, PACE_KINDS, Fault, strike


class FaultLog:
    """The faults of a session as the aggregator sees them, for N devices."""

    def __init__(self, faults: list[Fault], num_devices: int):
        self.own = {f.at: f for f in faults if f.target == AGGREGATOR}
        self.pace = [f for f in faults if f.kind in PACE_KINDS]
        self.began = {}  # index in pace -> perf_counter time its device got input AT
        self.sent = [0] * num_devices  # inputs sent per device over the session (what a fault's AT counts)

    def after_answer(self, answered: int) -> bool:
        """Strike the aggregator's fault due after `answered` answers, if any; True where it is a
        `corrupt` fault, which the caller carries out (it alone can send)."""
        fault = self.own.get(answered)
        return fault is not None and strike(fault)

    def input_sent(self, i: int, t: float) -> None:
        """Device i was sent an input at perf_counter time t."""
        for k, f in enumerate(self.pace):
            if f.target == i and f.at == self.sent[i]:
                self.began[k] = t
        self.sent[i] += 1

    def windows(self, issued_s: list[float]) -> list[dict]:
        """Per slow or link fault, the samples (issued at issued_s) issued while it was in force: [start, end)."""
        out = []
        for k, f in enumerate(self.pace):
            if f.kind == "slow" and f.factor == 1:  # the end of an earlier slowdown, not a fault of its own
                continue
            began = self.began.get(k)
            start = end = len(issued_s)
            if began is not None:
                start = next((s for s, t in enumerate(issued_s) if t >= began), start)
                ends = [began + f.seconds] if f.seconds > 0 and f.kind == "slow" else []
                ends += [self.began[j] for j, g in enumerate(self.pace)  # a later one replaces it
                         if g.kind == f.kind and g.target == f.target and g.at > f.at and j in self.began]
                if ends:
                    end = next((s for s, t in enumerate(issued_s) if t >= min(ends)), end)
            out.append({"fault": f"{f.kind}:{f.target}@{f.at}", "start": start, "end": end})
        return out
