"""The aggregator: feeds samples to the devices, gathers their evidence, answers by a deadline.

Every sample gets an answer. The aggregator waits for each live device until the deadline of
the round (a round is one message from every live device: the whole sample under a local
policy, one exit under a per-exit policy), then answers from the evidence it has, with the
aggregator of the set of devices that answered (`distree.models.surviving_sets`; a run
without that table zeroes the missing evidence), and marks the answer degraded. A device whose link breaks (it died) or whose heartbeat stops for `dead_after`
seconds (it froze) is declared lost: it is sent nothing more and waited for never again. A
device that is merely late stays live but gets no new sample until it has answered those it
holds (and the stream does not wait for it meanwhile); its late messages are recognised by
their sample id and dropped.

Under a latency target (runtime/adaptive.py) the aggregator also moves each device along its
policy's threshold path, among the combinations of settings that may run, telling it with a THRESHOLDS message that travels before the next
input, so every sample issued after a move runs under the new setting; it records the setting
each sample was issued under. Shadow samples (INPUT's exit field SHADOW_RUN) come back twice:
the answer as usual, then every device's exit-7 evidence (SHADOW), compared with the answer
once all of it is in; a shadow whose device is lost is dropped.

The aggregator answers and builds the next INPUT without torch ops: the samples are a numpy
array and the logits come from `runtime/answer.py`. Each torch op releases the GIL, which the
receiving and sending threads then take, so in a session the answer took 0.15-0.17 ms through
torch against 0.03 ms through numpy (benches/README.md).
"""
import random
import queue
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from distree.models.surviving_sets import SurvivingSets
from distree.policies import LAST_EXIT, NUM_EXITS
from distree.runtime import messages as m
from distree.runtime.adaptive import AdaptConfig, Controller, ShadowCheck
from distree.runtime.answer import Answers
from distree.runtime.fault_log import FaultLog
from distree.runtime.faults import Fault
from distree.runtime.group import Session
from distree.runtime.heartbeat import Heartbeat
from distree.runtime.links import Arrival, Link
from distree.plan import PolicySpec
from distree.runtime.policy_run import PolicyRun
from distree.runtime.stream import WHOLE, Evidence, Shadow, Stream, slowest
from distree.runtime.trace import AGGREGATOR, Trace


@dataclass
class Deadlines:
    """How long to wait for the devices per round: fixed, or `factor` x the recent median round."""

    fixed_s: float = 0.0  # > 0: always this
    factor: float = 4.0
    floor_s: float = 0.05
    startup_s: float = 10.0  # until `startup_rounds` rounds have come in time
    startup_rounds: int = 5
    dead_after_s: float = 5.0  # heartbeat silence that declares a device lost
    first_beat_s: float = 60.0  # how long a device may take to start (its first heartbeat): the connect timeout

    def of(self, run: PolicyRun) -> float:
        if self.fixed_s > 0:
            return self.fixed_s
        if len(run.round_s) < self.startup_rounds:
            return self.startup_s
        return max(self.floor_s, self.factor * statistics.median(run.round_s[-100:]))


class Aggregator:
    """Rank 0: runs each policy of the plan over the samples, on the devices of session."""

    def __init__(self, session: Session, model, plan: list[PolicySpec], deadlines: Deadlines, window: int,
                 faults: list[Fault], adapt: AdaptConfig = None, surviving: SurvivingSets | None = None,
                 trace: Trace | None = None):
        self.plan, self.deadlines, self.window, self.adapt = plan, deadlines, window, adapt
        self.surviving, self.answers = surviving, Answers(model, surviving)
        self.n = session.num_devices
        self.feature_dim = model.students[0].heads[0].weight.shape[0]  # K (D if projected)
        self.inbox = queue.SimpleQueue()
        size = m.message_size(self.feature_dim)  # every message a device sends is a FEATURE
        self.links = [Link(i + 1, self.inbox, device=session.device, recv_numel=size) for i in range(self.n)]
        self.heartbeat = Heartbeat(session.store, session.rank, [i + 1 for i in range(self.n)],
                                   deadlines.dead_after_s, deadlines.first_beat_s)
        self.live, self.lost = set(range(self.n)), {}
        self.lost_at: dict[int, float] = {}  # device -> perf_counter time it was declared lost
        self.faults = FaultLog(faults, self.n)
        self.answered = 0  # over the whole session, for faults
        self.streams: list[Stream] = []
        self.current = 0  # index of the policy streaming now
        self.num_samples = 0
        self.unanswered = [0] * self.n  # per device: inputs it has not yet answered with a message
        self.shadow_rng = random.Random(0)
        self.input_numel = 0
        self.trace = trace  # None: no marks (runtime/trace.py)

    def run(self, x: torch.Tensor, labels: torch.Tensor, chunk: int, between=None) -> list[Stream]:
        """Every policy of the plan over samples x (S, C, H, W) with labels (S,) (-1: unknown).

        The policies take turns, `chunk` samples each, so that all of them (and `between(lo, hi)`,
        called after each turn of samples lo..hi-1) meet the same load on a shared machine and
        their ratios hold within one run.
        """
        self.num_samples, self.input_numel = len(x), x[0].numel()
        x, labels = x.reshape(len(x), -1).contiguous().numpy(), labels.tolist()  # (S, C*H*W): no torch per sample
        self.streams = [self._stream(p, spec) for p, spec in enumerate(self.plan)]
        if self.lost:  # lost while the session started
            self._move_survivors()
        for lo in range(0, len(x), chunk):
            hi = min(lo + chunk, len(x))
            for stream in self.streams:
                self.current = stream.index
                began = time.perf_counter()
                (self._stream_local if stream.spec.policy.local else self._per_exit)(stream, x, labels, lo, hi)
                stream.run.busy_s += time.perf_counter() - began
            if between is not None:
                between(lo, hi)
        return self.streams

    def _stream(self, p: int, spec: PolicySpec) -> Stream:
        """Policy p's stream, with a controller and a shadow check where its thresholds follow a target."""
        run = PolicyRun(spec.name, spec.policy.local, spec.thresholds.tolist(), self.n)
        if self.adapt is None or spec.path is None:
            return Stream(p, spec, run, setting=[-1] * self.n)
        return Stream(p, spec, run, Controller(self.adapt, self.n, len(spec.path), spec.grid),
                      ShadowCheck(spec.risk["epsilon"], spec.risk["delta"], spec.grid))

    def shutdown(self, input_numel: int, timeout: float = 2.0) -> None:
        """Tell every live device to stop, and give the messages up to timeout to leave."""
        end = m.encode(m.END, payload=torch.zeros(input_numel))
        for i in self.live:
            self.links[i].send(end)
        for i in self.live:
            self.links[i].drain(timeout)

    def _stream_local(self, stream: Stream, x, labels, lo: int, hi: int) -> None:
        """Samples lo..hi-1, up to `window` in flight; each device answers each sample once."""
        run, issued, pending = stream.run, lo, {}  # pending: sample -> (time it left, devices it went to)
        for s in range(lo, hi):
            while issued < hi and issued - s < self.window:
                stream.open_round(issued)
                shadow = stream.adapting and self.shadow_rng.random() < self.adapt.shadow_fraction
                pending[issued] = self._issue(stream, issued, x[issued], self.window, shadow)
                issued += 1
            (t0, expected), got = pending.pop(s), stream.rounds[(s, WHOLE)]
            run.deadline_s = self.deadlines.of(run)
            self._collect(lambda: expected & self.live <= got.keys(), t0 + run.deadline_s)
            del stream.rounds[(s, WHOLE)]
            if expected & self.live <= got.keys():
                run.round_s.append(time.perf_counter() - t0)
            pred = self._answer(run, labels[s], got, t0, slowest(got))
            self._mark("answered", stream.index, s, WHOLE, AGGREGATOR)
            run.settings.append(stream.issued.pop(s))
            if stream.adapting:
                self._adapt(stream, s, expected, got, t0)
                if s in stream.shadows:
                    stream.shadows[s].pred = pred
                    self._compare(stream, s)

    def _per_exit(self, stream: Stream, x, labels, lo: int, hi: int) -> None:
        """Samples lo..hi-1 one at a time; at each exit 2..7 every device sends, the aggregator decides for all."""
        run, spec = stream.run, stream.spec
        for s in range(lo, hi):
            t0, expected = self._issue(stream, s, x[s], window=1)
            t_round, compute = t0, 0.0
            for j in range(1, NUM_EXITS):
                got = stream.open_round(s, j)
                run.deadline_s = self.deadlines.of(run)
                self._collect(lambda: expected & self.live <= got.keys(), t_round + run.deadline_s)
                del stream.rounds[(s, j)]
                complete, compute = expected & self.live <= got.keys(), compute + slowest(got)
                if complete:
                    run.round_s.append(time.perf_counter() - t_round)
                # a device late at this exit ends the sample: waiting another exit for it only adds latency
                stop = j == LAST_EXIT or not complete or not got
                if not stop:
                    z = torch.from_numpy(self._logits({i: e.u for i, e in got.items()}))[None]  # (1, K)
                    stop = bool(spec.policy.stops(z, spec.thresholds, j))
                for i in expected & self.live:
                    decision = m.encode(m.STOP if stop else m.CONTINUE, s, stream.index, j)
                    self._mark("told", stream.index, s, j, i)
                    self.links[i].send(decision)
                    run.downlink_decisions += 1
                t_round = time.perf_counter()
                if stop:
                    self._answer(run, labels[s], got, t0, compute)
                    self._mark("answered", stream.index, s, WHOLE, AGGREGATOR)
                    run.settings.append(stream.issued.pop(s))
                    break

    def _adapt(self, stream: Stream, s: int, expected: set, got: dict, t0: float) -> None:
        """Feed each device's latency for sample s to the controller; tell the devices that move."""
        run, control = stream.run, stream.control
        if len(run.latency_s) <= self.adapt.warmup:
            return
        answered = run.latency_s[-1]
        if control.calibrating(answered):
            return
        if got:
            control.overhead.append(max(0.0, answered - (max(e.arrived_s for e in got.values()) - t0)))
        for i in sorted(expected & self.live):
            latency = got[i].arrived_s - t0 if i in got else answered  # one that missed the deadline took at least that
            moved = control.observe(i, run.settings[-1][i], latency, got[i].compute_s if i in got else None)
            for k, index in control.take_made_room().items():  # stepped back first, so that device i may go cheaper
                self._tell(stream, s, k, index, f"room for device {i}")
            if moved is not None:
                self._tell(stream, s, i, moved, "over budget" if moved > run.settings[-1][i] else "slack")

    def _tell(self, stream: Stream, s: int, i: int, index: int, reason: str) -> None:
        self.links[i].send(m.encode_thresholds(index, stream.index, stream.spec.path[index], self.input_numel))
        stream.run.moves.append({"sample": s, "device": i, "setting": index, "reason": reason})

    def _compare(self, stream: Stream, s: int) -> None:
        """A shadow sample whose answer and every live device's exit-7 evidence are in: count it."""
        shadow = stream.shadows[s]
        if shadow.pred is None or not shadow.to & self.live <= shadow.u.keys():
            return
        del stream.shadows[s]
        if not shadow.to & self.live:
            return
        full = int(self._logits({i: u for i, u in shadow.u.items() if i in self.live}).argmax())
        run, check, control = stream.run, stream.check, stream.control
        run.shadow.append((s, shadow.pred != full))
        fired = check.add(shadow.setting, shadow.pred != full)
        if fired is None:
            return
        if fired["rule"] == "bound":  # that combination no longer, and the current one only if it may run
            control.rule_out(fired["setting"])
            why = (f"the bound of settings {fired['setting']} passed epsilon {check.epsilon:g} "
                   f"({fired['bound']:.4f})")
            moved = control.limit(control.cap)
        else:
            why = (f"{fired['disagreements']} of {fired['shadows']} shadow samples disagree with exit 7, "
                   f"over epsilon {check.epsilon:g}")
            moved = control.limit(max(0, max(control.indices) - 1))
        run.guard.append({"sample": s, **fired, "epsilon": check.epsilon, "cap": control.cap})
        print(f"aggregator: {run.name}: {why}; no device cheaper than setting {control.cap} from sample {s}",
              file=sys.stderr, flush=True)
        for i, index in moved.items():
            if i in self.live:
                self._tell(stream, s, i, index, "shadow disagreement")

    def _issue(self, stream: Stream, s: int, x: np.ndarray, window: int, shadow: bool = False) -> tuple[float, set]:
        """Send sample s, x (C*H*W,), to every live device with fewer than `window` inputs unanswered; (time it
        left, those devices).

        A late device gets no new work until it has answered what it holds, so after a stall it
        catches up at once instead of working through a backlog of samples already answered.
        Any message counts as an answer, a malformed one too, so a bad message cannot leave a
        device waiting for work forever; a per-exit sample takes one or more messages, hence the
        clamp at 0. When every live device is late, the sample waits (up to a deadline) for one of
        them to catch up rather than be answered from no evidence at all.
        """
        self._mark("issue", stream.index, s, WHOLE, AGGREGATOR)
        if self.live and not self._free(window):
            self._collect(lambda: not self.live or self._free(window),
                          time.perf_counter() + self.deadlines.of(stream.run))
        msg = m.encode(m.INPUT, s, stream.index, m.SHADOW_RUN if shadow else 0, x)
        to = self._free(window)
        t = time.perf_counter()
        for i in to:
            self._mark("out", stream.index, s, WHOLE, i)
            self.links[i].send(msg)
            self.unanswered[i] = max(self.unanswered[i], 0) + 1
            self.faults.input_sent(i, t)
        stream.issued[s] = stream.control.indices if stream.adapting else list(stream.setting)
        stream.run.issued_s.append(t)
        if shadow and to:
            stream.shadows[s] = Shadow(to, stream.issued[s])
        return t, to

    def _free(self, window: int) -> set:
        """The live devices that may take a new sample: fewer than `window` inputs unanswered."""
        return {i for i in self.live if self.unanswered[i] < window}

    def _collect(self, done, deadline_at: float) -> None:
        """Take arrivals until done() or the deadline; checks heartbeats while it waits."""
        while not done():
            remaining = deadline_at - time.perf_counter()
            if remaining <= 0:
                return
            try:
                self._take(self.inbox.get(timeout=min(remaining, self.heartbeat.interval)))
            except queue.Empty:
                pass
            for i in list(self.live):
                why = self.heartbeat.silence(i + 1)
                if why is not None:
                    self._lose(i, why)

    def _take(self, arrival: Arrival) -> None:
        """File one arrival: evidence under its open round, or a loss, a stale or a bad message."""
        i = arrival.peer - 1
        if i not in self.live:
            return
        if arrival.error is not None:
            self._lose(i, arrival.error)
            return
        run = self.streams[self.current].run
        try:
            msg = m.decode(arrival.msg, (m.FEATURE, m.SHADOW), len(self.plan), NUM_EXITS, self.feature_dim,
                           self.num_samples)
        except m.BadMessage as err:
            msg = None
            print(f"aggregator: rejected a message from device {i}: {err}", file=sys.stderr, flush=True)
        if msg is not None and msg.kind == m.SHADOW:  # an extra message: it answers no input
            self._shadow_arrived(i, msg)
            return
        self.unanswered[i] -= 1
        run.uplink_messages += 1
        run.uplink_bytes += arrival.msg.numel() * arrival.msg.element_size()
        if msg is None:
            run.rejected += 1
            return
        stream = self.streams[msg.policy]
        got = stream.rounds.get(stream.round_key(msg.seq, msg.exit))
        if got is None:
            run.stale += 1
        else:
            got[i] = Evidence(msg.exit, msg.payload, msg.micros / 1e6, time.perf_counter())
            if self.trace is not None:
                key = stream.round_key(msg.seq, msg.exit)
                self.trace.mark("received", msg.policy, msg.seq, key[1], i, arrival.received_s)
                self.trace.mark("filed", msg.policy, msg.seq, key[1], i, got[i].arrived_s)

    def _shadow_arrived(self, i: int, msg: m.Message) -> None:
        stream = self.streams[msg.policy]
        stream.run.shadow_messages += 1
        shadow = stream.shadows.get(msg.seq)
        if shadow is None:
            stream.run.stale += 1
            return
        shadow.u[i] = msg.payload
        self._compare(stream, msg.seq)

    def _lose(self, i: int, reason: str) -> None:
        self.live.discard(i)
        self.lost[i] = reason
        self.lost_at[i] = time.perf_counter()
        self._move_survivors()
        print(f"aggregator: device {i} lost after {self.answered} answers ({reason}); answering without it",
              file=sys.stderr, flush=True)

    def _move_survivors(self) -> None:
        """Tell the devices that are left to take their set's certified setting, in every static stream
        that has one, and let every adaptive stream move them only among their set's certified
        combinations: the THRESHOLDS message travels before their next input."""
        members = tuple(sorted(self.live))
        why = f"devices {'+'.join(map(str, members))} left"
        for stream in self.streams:
            if stream.adapting:
                self._adapt_to_set(stream, members, why)
                continue
            index = stream.spec.loss_index(members)
            if index is None:
                continue
            for i in members:
                self.links[i].send(m.encode_thresholds(index, stream.index, stream.spec.settings()[index],
                                                       self.input_numel))
                stream.setting[i] = index
                stream.run.moves.append({"sample": len(stream.run.preds), "device": i, "setting": index,
                                         "reason": why})

    def _adapt_to_set(self, stream: Stream, members: tuple, why: str) -> None:
        """An adaptive stream after a loss: its controller and shadow check take the grid certified for
        the set that is left (none: the devices hold the most conservative setting), and the devices
        whose setting that grid does not allow move."""
        grid = stream.spec.set_grids.get(members) if members else None
        if grid is None and members:
            print(f"aggregator: {stream.spec.name}: no combinations certified for devices "
                  f"{'+'.join(map(str, members))}; they hold the most conservative setting", file=sys.stderr, flush=True)
        moved = stream.control.lose(grid)
        stream.check.lose(grid, members, len(stream.run.preds))
        for i, index in moved.items():
            if i in self.live:
                self._tell(stream, len(stream.run.preds), i, index, why)

    def _mark(self, event: str, policy: int, seq: int, exit: int, device: int) -> None:
        if self.trace is not None:
            self.trace.mark(event, policy, seq, exit, device, time.perf_counter())

    def _logits(self, evidence: dict) -> np.ndarray:
        """z (K,) from {device: u (D,)}, by the aggregator of the devices that answered (runtime/answer.py)."""
        return self.answers.logits({i: u.numpy() for i, u in evidence.items()})

    def _answer(self, run: PolicyRun, label: int, got: dict, t0: float, compute: float) -> int:
        """Answer one sample from the evidence in got; the prediction."""
        pred = int(self._logits({i: e.u for i, e in got.items()}).argmax())
        exits = [got[i].exit if i in got else -1 for i in range(self.n)]
        run.record(label, pred, exits, time.perf_counter() - t0, compute)
        self.answered += 1
        if self.faults.after_answer(self.answered):
            self._corrupt_thresholds()
        return pred

    def _corrupt_thresholds(self) -> None:
        """A `corrupt:agg` fault: send every live device a THRESHOLDS message past its policy's path."""
        spec = self.plan[self.current]
        settings = spec.settings()
        index = len(settings) if settings is not None else 0
        for i in self.live:
            self.links[i].send(m.encode_thresholds(index, self.current, spec.thresholds, self.input_numel))
