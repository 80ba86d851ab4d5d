"""A student device: receive a sample, run the student to its exit, send the evidence, repeat.

The device receives in its own thread, with no hop through a queue: under a local policy it
posts the receive of the next input (`irecv`) before computing the current one, so the next
sample arrives while this one computes. Per-exit policies are a lock-step conversation instead
(send u_j, receive CONTINUE or STOP), and the next input is received once the answer is STOP.
Either way a receive is posted before the message it waits for can be sent: gloo sends a
message only once its receiver has posted the receive, so a late one costs another trip.

A device blocked in a receive cannot watch a deadline, so its heartbeat thread does: if the
aggregator's heartbeat stops for `dead_after` seconds (frozen, or its store is gone), the
watchdog prints the reason and ends the process. A dead aggregator is found sooner: its
sockets close and the blocked receive raises.

Under a latency target the aggregator may send THRESHOLDS between inputs: the device takes
them only if they are well formed and exactly the setting its own copy of the policy's path
holds at that index; anything else is dropped, counted and reported on stderr, and the setting
in force stays. A shadow input (exit field SHADOW_RUN) is answered as usual, then run again to
exit 7, whose evidence goes back as SHADOW. That walk is background work: it advances a stage at
a time only while no message waits, so the inputs after a shadow are not held up by a whole
walk to exit 7 (on a slowed device, three times a full walk) but by one stage at most. A gloo
receive cannot tell whether it has completed without waiting for it (`Work.is_completed()` stays
false until `wait()`), so while shadows are pending a helper thread waits for the posted receive
and the main thread runs stages until it is done. `slow` and `link` faults set the device's pace
(runtime/pace.py), shadow stages included.
"""
import os
import sys
import threading
import time
from collections import deque

import torch
import torch.distributed as dist

from distree.errors import DistreeError
from distree.runtime import messages as m
from distree.runtime.faults import PACE_KINDS, Fault, strike
from distree.runtime.group import AGGREGATOR_RANK, Session
from distree.runtime.heartbeat import Heartbeat
from distree.runtime.links import Link, first_line
from distree.runtime.netem import LinkModel
from distree.runtime.pace import Pace
from distree.runtime.stream import WHOLE
from distree.runtime.trace import Trace
from distree.inference.step import DeviceStep
from distree.policies import NUM_EXITS

BAD_EXIT = 99  # what a `corrupt` fault writes in the exit field
LOST = 3  # exit code of a device whose aggregator is gone


class AggregatorLost(DistreeError):
    """The aggregator died or broke the protocol; the device cannot go on."""


class Device:
    """Student `index` (rank index + 1) serving one step per policy, in the plan's order: a DeviceStep, or an
    OnnxStep (runtime/onnx_device.py) where the device runs its exported ONNX student."""

    def __init__(self, session: Session, index: int, steps: list, input_shape: tuple,
                 link: LinkModel, faults: list[Fault], dead_after: float, startup_s: float, paths: list = None,
                 full: DeviceStep = None, trace: Trace | None = None):
        """paths[p]: the settings (C, 5) policy p may be told to take (PolicySpec.settings) or None; full:
        the walk to exit 7 for shadows; trace: where to mark each message's moments (runtime/trace.py), or None;
        dead_after: the aggregator's heartbeat silence that stops the device; startup_s: how long the
        aggregator may take to start beating."""
        self.index, self.steps, self.input_shape, self.device = index, steps, input_shape, session.device
        self.num_exits = NUM_EXITS
        self.input_numel = torch.Size(input_shape).numel()
        self.faults = {f.at: f for f in faults if f.target == index and f.kind not in PACE_KINDS}
        self.pace = Pace(faults, index, link)
        self.paths, self.full = paths or [None] * len(steps), full
        self.settings = ThresholdSettings(index, steps, self.paths)
        self.trace, self.arrived_s = trace, 0.0  # arrived_s: when the last message _take waited for came in
        self.link = Link(AGGREGATOR_RANK, model=link, seed=index, device=session.device)
        self.heartbeat = Heartbeat(session.store, session.rank, [AGGREGATOR_RANK], dead_after, startup_s,
                                   on_silence=self._aggregator_silent)

    def serve(self) -> int:
        """Answer inputs until END (returns 0); AggregatorLost when the aggregator is gone."""
        received = 0
        pending = self._post(self.input_numel)
        shadows = deque()  # (message, its walk to exit 7), oldest first
        while True:
            if shadows:
                pending = self._between_messages(pending, shadows)
            waiting = time.perf_counter()
            msg = self._take(pending, (m.INPUT, m.END, m.THRESHOLDS), self.input_numel)
            began = time.perf_counter()
            if msg is None or msg.kind == m.THRESHOLDS:
                if msg is not None:
                    self.settings.apply(msg)
                pending = self._post(self.input_numel)
                continue
            if msg.kind == m.END:
                self.link.drain(timeout=1.0)
                if self.trace is not None:
                    self.trace.write()
                return 0
            self.link.model = self.pace.on_input(received)
            fault = self.faults.get(received)
            received += 1
            corrupt = fault is not None and strike(fault)
            step, x = self.steps[msg.policy], msg.payload.view(self.input_shape).to(self.device)  # (C, H, W)
            if step.policy.local:
                pending = self._post(self.input_numel)  # prefetch: the next input arrives while we compute
                u, j = step.run_one(x, msg.seq)  # (K,)
                self.pace.spend(began)
                computed = time.perf_counter()
                out = m.encode(m.FEATURE, msg.seq, msg.policy, BAD_EXIT if corrupt else j, u, micros(began))
                self._mark(msg, WHOLE, waiting, began, computed)
                self._send(out)
                if msg.exit == m.SHADOW_RUN and self.full is not None:
                    shadows.append((msg, self.full.per_exit(x)))
            else:
                self._per_exit(step, x, msg, corrupt, waiting, began)
                pending = self._post(self.input_numel)

    def _between_messages(self, pending, shadows: deque):
        """Run stages of the pending shadows until the posted receive completes; the receive, done."""
        buf, work = pending
        arrived, failed = threading.Event(), []

        def wait() -> None:
            try:
                work.wait()
            except RuntimeError as err:
                failed.append(err)
            arrived.set()

        threading.Thread(target=wait, daemon=True, name="receive").start()
        while shadows and not arrived.is_set():
            self._shadow_stage(shadows)
        arrived.wait()
        return buf, Received(failed[0] if failed else None)

    def _shadow_stage(self, shadows: deque) -> None:
        """Advance the oldest shadow's walk by one exit; at exit 7 send its evidence as SHADOW."""
        msg, walk = shadows[0]
        began = time.perf_counter()
        j, u = next(walk)  # (K,)
        self.pace.spend(began)
        if j == NUM_EXITS - 1:
            shadows.popleft()
            self._send(m.encode(m.SHADOW, msg.seq, msg.policy, j, u, micros(began)))

    def _per_exit(self, step: DeviceStep, x: torch.Tensor, msg: m.Message, corrupt: bool, waiting: float,
                  began: float) -> None:
        for j, u in step.per_exit(x):
            self.pace.spend(began)
            computed = time.perf_counter()
            out = m.encode(m.FEATURE, msg.seq, msg.policy, BAD_EXIT if corrupt else j, u, micros(began))
            self._mark(msg, j, waiting, began, computed)
            pending = self._post(0)  # before the evidence leaves, so the decision never waits for the receive
            self._send(out)
            corrupt = False
            waiting = time.perf_counter()
            decision = self._take(pending, (m.CONTINUE, m.STOP), 0)
            began = time.perf_counter()
            if (decision.seq, decision.exit) != (msg.seq, j):
                raise AggregatorLost(f"got the decision for sample {decision.seq} exit {decision.exit + 1} "
                                     f"while waiting for sample {msg.seq} exit {j + 1}: protocol broken")
            if decision.kind == m.STOP:
                return

    def _mark(self, msg: m.Message, exit: int, waiting: float, began: float, computed: float) -> None:
        """The moments of the round (msg's sample, exit) on this device, its message about to leave."""
        if self.trace is not None:
            sent = time.perf_counter()
            for event, t in (("waiting", waiting), ("arrived", self.arrived_s), ("decoded", began),
                             ("computed", computed), ("sent", sent)):
                self.trace.mark(event, msg.policy, msg.seq, exit, self.index, t)

    def _post(self, payload_numel: int):
        """Post the receive of the next message from the aggregator: (buffer, work)."""
        buf = torch.empty(m.message_size(payload_numel), dtype=torch.int32, device=self.device)
        try:
            return buf, dist.irecv(buf, AGGREGATOR_RANK)
        except RuntimeError as err:  # the aggregator has gone since the last message: gloo refuses at once
            raise AggregatorLost(f"link to the aggregator broke ({first_line(err)})") from None

    def _take(self, pending, kinds: tuple, payload_numel: int) -> m.Message | None:
        """Wait for a posted receive and check the message; None for a malformed THRESHOLDS (rejected)."""
        buf, work = pending
        try:
            work.wait()
        except RuntimeError as err:
            raise AggregatorLost(f"link to the aggregator broke ({first_line(err)})") from None
        self.arrived_s = time.perf_counter()
        buf = buf.cpu()
        try:
            return m.decode(buf, kinds, len(self.steps), self.num_exits, payload_numel,
                            num_settings=self.settings.lengths)
        except m.BadMessage as err:
            if m.THRESHOLDS in kinds and int(buf[1]) == m.THRESHOLDS:  # a bad setting is not a broken protocol
                self.settings.reject(str(err))
                return None
            raise AggregatorLost(f"malformed message from the aggregator: {err}") from None

    def _send(self, msg: torch.Tensor) -> None:
        if self.link.error is not None:
            raise AggregatorLost(f"link to the aggregator broke ({self.link.error})")
        self.link.send(msg)

    def _aggregator_silent(self, peer: int, why: str) -> None:
        """Watchdog: the main thread may be blocked in a receive that never returns; leave now."""
        print(f"error: device {self.index}: {why} from the aggregator; stopping", file=sys.stderr, flush=True)
        os._exit(LOST)


class ThresholdSettings:
    """The setting each policy of a device runs under, changed only to one of the settings its own copy of
    the plan lists (the path, then a setting per surviving set)."""

    def __init__(self, index: int, steps: list[DeviceStep], paths: list):
        self.index, self.steps, self.paths = index, steps, paths
        self.lengths = [0 if path is None else len(path) for path in paths]
        self.current = [0 if path is not None else None for path in paths]
        self.rejected = 0

    def apply(self, msg: m.Message) -> bool:
        """Take a decoded THRESHOLDS message; whether it was taken (else it is rejected)."""
        path = self.paths[msg.policy]
        if not torch.equal(msg.payload, path[msg.seq]):
            self.reject(f"setting {msg.seq} of policy {msg.policy} is not the path's {path[msg.seq].tolist()}")
            return False
        self.steps[msg.policy].set_thresholds(msg.payload)
        self.current[msg.policy] = msg.seq
        return True

    def reject(self, why: str) -> None:
        self.rejected += 1
        print(f"device {self.index}: rejected a THRESHOLDS message ({why}); keeping the setting in force "
              f"({self.rejected} rejected so far)", file=sys.stderr, flush=True)


class Received:
    """A receive a helper thread has already waited for: its `wait()` returns, or raises what the wait raised."""

    def __init__(self, error: RuntimeError | None):
        self.error = error

    def wait(self) -> None:
        if self.error is not None:
            raise self.error


def micros(since: float) -> int:
    return int((time.perf_counter() - since) * 1e6)


def run_device(device: Device) -> int:
    """serve() with a lost aggregator reported on stderr; the process exit code."""
    try:
        return device.serve()
    except AggregatorLost as err:
        print(f"error: device {device.index}: {err}; stopping", file=sys.stderr, flush=True)
        return LOST
