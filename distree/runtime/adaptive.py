"""Thresholds that follow the devices: a latency target held per device, and a shadow accuracy check.

The aggregator owns both and tells a device its setting (an index on its policy's path) with a
THRESHOLDS message; a device never moves by itself.

Latency (`Controller`): per device, the latencies of its recent answers (from the moment the
sample left the aggregator to the moment that device's evidence arrived; the deadline where it
never did), counted only under the setting in force, so a move is judged on what it did. Its
budget is the target less the aggregator's own share (the recent median time from the last
device's evidence to the answer), as the devices work in parallel.
- Cheaper as soon as `react` answers under the setting put their P-th percentile over budget,
  half of the last `react` of them over it too (with few answers a high percentile is their
  largest, and one hiccup of the messages, which no setting shortens, would move the device).
  With a grid that knows each setting's cost (the P-th percentile of the device's FLOPs per
  sample on calibration, the percentile it holds) it goes straight to the most conservative setting predicted within
  `margin` x budget: the messages' share (percentile of latency less percentile of compute) plus
  the compute scaled by the ratio of the two settings' costs; where none is, to the cheapest.
  Without costs, one step.
- Back toward the conservative end once a full window of answers under the setting predicts
  that it would stay under budget there: with a grid, straight to the most conservative setting
  predicted under budget (the jump cheaper aimed at `margin` x budget, and the wait is the
  hysteresis). Where the device has run at that setting, the prediction is the percentile it
  measured there times how much slower it now computes per unit of cost (the 3x of a slowdown
  keeps it cheap; its end brings it back within a window); else the percentile now plus the
  median compute now times the cost ratio, less one. Without a grid, one step, predicted under
  `slack` x budget as below.
- Only to combinations of the devices' settings that may run: those the grid certified (the
  all-conservative one always may) and the shadow check has not ruled out. Where no cheaper
  setting of a device over budget may run with the others where they are, the others step back
  (as few steps as make one that may, each only where predicted within budget there) to make
  room: a combination is certified as a whole, and a device that went cheap while within reach
  of its budget would otherwise hold the risk a slowed one needs.
Without a grid the step-back prediction adds to the percentile now the compute the conservative
neighbour would add: the device's median compute time now (each FEATURE reports it) times the ratio of the two
settings' median compute times measured around the last move between them, less one. A slow
device is slow at every setting alike, so the compute ratio holds through a slowdown (the
messages' time, which does not slow, is left out of it): a device does not step back into a
setting it has just left for being too slow, yet it does step back once the slowdown ends.
Without a measured ratio the prediction is the percentile itself, and so it is after 3 windows
at one setting (a ratio measured as the device's pace changed, say a slowdown that ended just as
it moved, must not hold it cheap for long). The asymmetry is the hysteresis: a step that breaks
the target is undone within a few samples, a step back waits for a full window of evidence. A
step back that has to be undone anyway doubles the wait before the next one (up to 8 windows);
one that holds resets it.

Accuracy (`ShadowCheck`): a fraction of samples also runs to exit 7 on every device; a shadow
disagrees when the adaptive answer differs from the full-depth one (the consistency risk, which
needs no labels). Each shadow counts for the combination of settings it ran under. The check
acts in two cases:
- bound: with a grid, the combination's running estimate pools its calibration samples with its
  shadows, and its upper confidence bound (at the grid's Bonferroni level, where certification
  put it within epsilon) must stay within epsilon: when a shadow takes it past, the combination
  is ruled out for the rest of the session.
- drift: the disagreements since the last action make "risk <= epsilon" implausible on the
  shadows alone, P(Binom(n, epsilon) >= k) <= delta; this reacts to a deployment drifting away
  from its calibration long before the pooled bound does (2 of 19 shadows at epsilon 1%).
Either way every device steps back toward the conservative end and none may go cheaper than the
new cap; the drift counts restart. The report gives the shadows' estimate k/n over the run with
its Clopper-Pearson upper bound at 1 - delta (`distree.risk.upper_bound`), and per combination
the pooled estimate and bound.

Why not the shadows' own bound: with 2% of samples as shadows a run of 900 has 18, and 0 of 18
bounds the risk only at 12% (delta 0.1); an epsilon of 1% needs about 230 shadows before any
bound on shadows alone falls below it, so that rule would hold every device at the conservative
end for 11,500 samples. Calibration already measured each combination on thousands of samples;
the shadows extend that count online.
"""
import itertools
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from distree.risk import p_value, upper_bound
from distree.risk_grid import GridCertificate

MAX_RELAX_WINDOWS = 8
RATIO_WINDOWS = 3  # a compute ratio older than this many windows at one setting is not trusted


@dataclass
class AdaptConfig:
    target_s: float | None  # the latency target L; None: target_x times the policy's healthy median
    target_x: float = None  # with target_s None: L = this x the median of the `calibrate` answers after warm-up
    calibrate: int = 30
    percentile: float = 95.0  # P
    window: int = 30  # answers per device kept (and needed before a step back)
    react: int = 6  # answers under a setting before it may be judged too slow
    slack: float = 0.7  # step back only below this fraction of the budget
    margin: float = 0.8  # a jump cheaper aims at this fraction of the budget
    shadow_fraction: float = 0.02
    warmup: int = 2  # a policy's first answers, slow while the processes warm up, judge nothing


@dataclass
class DeviceState:
    index: int = 0  # setting on the path
    latencies: deque = field(default_factory=deque)  # seconds, the last `window` under the current setting
    computes: deque = field(default_factory=deque)  # the device's own compute seconds for those answers
    since: int = 0  # answers under the current setting
    relax_wait: int = 0  # answers needed under the setting before a step back
    relaxed: bool = False  # the last move was a step back, not yet confirmed by a full wait
    left: tuple = None  # (setting, its median compute) just before the last move, until the ratio is measured
    ratios: dict = field(default_factory=dict)  # k -> median compute at setting k over that at k + 1
    seen: dict = field(default_factory=dict)  # k -> (percentile, median compute) when the device last left k


class Controller:
    """The per-device settings of one policy's path of `length` settings, for N devices; `grid`
    (None: every combination runs, one step at a time) says which combinations may run and what
    each setting costs."""

    def __init__(self, config: AdaptConfig, num_devices: int, length: int, grid: GridCertificate = None):
        self.config, self.length, self.cap = config, length, length - 1
        self._use(grid)
        self.target_s, self.healthy = config.target_s, []  # healthy: latencies measured for a relative target
        self.devices = [DeviceState(relax_wait=config.window) for _ in range(num_devices)]
        self.overhead = deque(maxlen=config.window)  # seconds from the last evidence to the answer
        self.ruled_out = set()  # combinations the shadow check stopped
        self.made_room = {}  # {device: setting} stepped back for another device, until the aggregator takes it

    def _use(self, grid: GridCertificate | None) -> None:
        """Move among `grid`'s combinations, pricing each setting at the percentile the controller holds."""
        self.grid = grid
        self.cost = None if grid is None else grid.costs.at(self.config.percentile)  # (C, N)

    @property
    def indices(self) -> list[int]:
        return [d.index for d in self.devices]

    def allowed(self, indices) -> bool:
        """Whether this combination of settings may run."""
        indices = tuple(indices)
        if not any(indices):
            return True
        return indices not in self.ruled_out and (self.grid is None or self.grid.allows(indices))

    def budget(self) -> float:
        return self.target_s - (float(np.median(self.overhead)) if self.overhead else 0.0)

    def calibrating(self, latency_s: float) -> bool:
        """Whether a relative target is still being measured (nothing moves meanwhile), given an answer's latency."""
        if self.target_s is not None:
            return False
        self.healthy.append(latency_s)
        if len(self.healthy) >= self.config.calibrate:
            self.target_s = self.config.target_x * float(np.median(self.healthy))
        return True

    def observe(self, i: int, index: int, latency_s: float, compute_s: float = None) -> int | None:
        """Device i answered under setting `index` in latency_s, having computed compute_s (None: its
        answer missed the deadline); its new setting, or None to stay."""
        d, c = self.devices[i], self.config
        if index != d.index:
            return None  # issued before the last move: says nothing of the setting now in force
        d.latencies.append(latency_s)
        if len(d.latencies) > c.window:
            d.latencies.popleft()
        if compute_s is not None:
            d.computes.append(compute_s)
            if len(d.computes) > c.window:
                d.computes.popleft()
        d.since += 1
        budget, p = self.budget(), float(np.percentile(d.latencies, c.percentile))
        compute = float(np.median(d.computes)) if d.computes else 0.0
        if d.left is not None and d.since >= c.react and compute > 0:  # both sides of the last move measured
            (k, before), d.left = d.left, None
            if abs(k - d.index) == 1 and before > 0:
                d.ratios[min(k, d.index)] = before / compute if k < d.index else compute / before
        recent = list(d.latencies)[-c.react:]
        over = 2 * sum(v > budget for v in recent) >= len(recent)  # half of the last `react`: not one hiccup
        if d.since >= c.react and p > budget and over and d.index < self.cap:
            options = [j for j in range(d.index + 1, self.cap + 1) if self.allowed(self._with(i, j))]
            rooms = {} if options else self._rooms(i, budget)  # none may run with the others where they are
            cheaper = self._cheaper(i, p, budget, options or list(rooms))
            if cheaper is not None:
                for k, index in rooms.get(cheaper, {}).items():
                    self.made_room[k] = self._move(self.devices[k], index, relaxed=True)
                if d.relaxed:  # the step back did not hold: wait longer before the next
                    d.relax_wait = min(2 * d.relax_wait, MAX_RELAX_WINDOWS * c.window)
                return self._move(d, cheaper, relaxed=False)
        if d.relaxed and d.since >= d.relax_wait:  # the step back held for a full wait
            d.relaxed, d.relax_wait = False, c.window
        if d.since < max(d.relax_wait, c.window) or d.index == 0:
            return None
        if self.grid is not None:  # the most conservative setting the costs predict within budget
            cost = self.cost[:, i]  # (C,)
            back = [j for j in range(d.index) if self.allowed(self._with(i, j))
                    and self._predicted(d, j, p, compute, cost) < budget]
            return self._move(d, back[0], relaxed=True) if back else None
        stale = d.since >= RATIO_WINDOWS * c.window  # a ratio from long ago may be a transient's: try anyway
        ratio = 1.0 if stale else d.ratios.get(d.index - 1, 1.0)
        predicted = p + compute * max(0.0, ratio - 1)  # at the conservative neighbour
        if predicted < c.slack * budget and self.allowed(self._with(i, d.index - 1)):
            return self._move(d, d.index - 1, relaxed=True)
        return None

    def _with(self, i: int, index: int, others: dict[int, int] = None) -> list[int]:
        """The settings in force with device i's replaced by `index` (and device k's by others[k])."""
        indices = self.indices
        for k, setting in {**(others or {}), i: index}.items():
            indices[k] = setting
        return indices

    def _cheaper(self, i: int, p: float, budget: float, options: list[int]) -> int | None:
        """Of the cheaper settings `options` (ascending) device i may go to, its latency percentile p over
        budget, the one to go to; None where there is none."""
        d = self.devices[i]
        if not options or self.grid is None:
            return options[0] if options else None
        compute = float(np.percentile(d.computes, self.config.percentile)) if d.computes else 0.0
        messages, cost = max(0.0, p - compute), self.cost[:, i]  # (C,)
        for j in options:
            if messages + compute * float(cost[j] / cost[d.index]) <= self.config.margin * budget:
                return j
        return options[-1]

    def _rooms(self, i: int, budget: float) -> dict[int, dict[int, int]]:
        """{setting j of device i: {device: setting}}: per cheaper j, the fewest steps back of the other
        devices after which the combination may run, each device that steps back predicted within budget
        at its new setting (from answers under its setting now); only the j that some such step back allows.
        A combination is certified as a whole, so a device that went cheap while within reach of its
        budget can hold the risk another device, slowed, needs (with a grid only)."""
        if self.grid is None:
            return {}
        others = [k for k in range(len(self.devices)) if k != i]
        now = {k: self.devices[k].index for k in others}
        affordable = [[s for s in range(now[k] + 1) if s == now[k] or self._within(k, s, budget)] for k in others]
        backs = [{k: s for k, s in zip(others, settings) if s != now[k]} for settings in itertools.product(*affordable)]
        backs.sort(key=lambda moved: sum(now[k] - s for k, s in moved.items()))  # fewest steps back first
        rooms = {}
        for j in range(self.devices[i].index + 1, self.cap + 1):
            room = next((moved for moved in backs if self.allowed(self._with(i, j, moved))), None)
            if room is not None:
                rooms[j] = room
        return rooms

    def _within(self, k: int, index: int, budget: float) -> bool:
        """Whether device k is predicted within budget at setting `index`, from its answers under its setting now."""
        d = self.devices[k]
        if len(d.latencies) < self.config.react or not d.computes:
            return False
        p = float(np.percentile(d.latencies, self.config.percentile))
        return self._predicted(d, index, p, float(np.median(d.computes)), self.cost[:, k]) < budget

    def take_made_room(self) -> dict[int, int]:
        """{device: setting} of the devices the last observations stepped back to make room for another."""
        moved, self.made_room = self.made_room, {}
        return moved

    def limit(self, cap: int) -> dict[int, int]:
        """No device cheaper than setting `cap` from now on, nor in a combination that may not run;
        {device: new setting} for those that move."""
        moved = {}
        while True:
            self.cap = cap
            for i, d in enumerate(self.devices):
                if d.index > cap:
                    moved[i] = self._move(d, cap, relaxed=False)
            if cap == 0 or self.allowed(self.indices):
                return moved
            cap -= 1

    def rule_out(self, indices) -> None:
        self.ruled_out.add(tuple(indices))

    def lose(self, grid: GridCertificate | None) -> dict[int, int]:
        """Devices were lost: from now on only the combinations `grid` certified for the set that is left
        (None: none certified, so every device holds the most conservative setting); {device: new
        setting} for those that move. What the shadows ruled out was for another aggregator."""
        self._use(grid)
        self.ruled_out = set()
        return self.limit(self.cap if grid is not None else 0)

    def _predicted(self, d: DeviceState, j: int, p: float, compute: float, cost) -> float:
        """Device d's latency percentile at setting j, from its percentile p and median compute now.

        Where it has run at j, what it measured there, times how much slower it computes now per
        unit of cost (never less: a faster pace is not counted on); else p plus the compute j adds
        by the costs."""
        now = float(cost[d.index])
        if j in d.seen and compute > 0 and d.seen[j][1] > 0:
            then_p, then_compute = d.seen[j]
            return then_p * max(1.0, (compute / now) / (then_compute / float(cost[j])))
        return p + compute * max(0.0, float(cost[j]) / now - 1)

    def _move(self, d: DeviceState, index: int, relaxed: bool) -> int:
        react = self.config.react
        before = list(d.latencies)[:-react] if index > d.index else list(d.latencies)  # not what made it move
        if len(before) >= react and d.computes:
            d.seen[d.index] = (float(np.percentile(before, self.config.percentile)), float(np.median(d.computes)))
        d.left = (d.index, float(np.median(d.computes))) if d.computes else None
        d.index, d.relaxed, d.since = index, relaxed, 0
        d.latencies.clear()
        d.computes.clear()
        return index


class ShadowCheck:
    """Disagreement of the adaptive answer with the full-depth one, on the shadow samples, per
    combination of settings they ran under; `grid` (None: none) holds each combination's calibration."""

    def __init__(self, epsilon: float, delta: float, grid: GridCertificate = None):
        self.epsilon, self.delta, self.grid = epsilon, delta, grid
        self.k = self.n = 0  # since the last action
        self.counts = {}  # combination -> [disagreements, shadows]
        self.before = []  # the summaries of the counts kept before each loss of devices

    def add(self, indices, disagrees: bool) -> dict | None:
        """Count one shadow that ran under the combination `indices`; what fired (the caller then
        steps back), else None."""
        indices = tuple(indices)
        self.k, self.n = self.k + disagrees, self.n + 1
        counts = self.counts.setdefault(indices, [0, 0])
        counts[0], counts[1] = counts[0] + disagrees, counts[1] + 1
        fired, bound = None, self.bound(indices) if any(indices) else None
        if bound is not None and bound > self.epsilon:
            fired = {"rule": "bound", "setting": list(indices), "bound": bound}
        elif self.k and 1 - p_value(self.k - 1, self.n, self.epsilon) <= self.delta:  # P(X >= k) <= delta
            fired = {"rule": "drift"}
        if fired is None:
            return None
        fired.update(disagreements=self.k, shadows=self.n)
        self.k = self.n = 0
        return fired

    def lose(self, grid: GridCertificate | None, members: tuple, sample: int) -> None:
        """Devices were lost at `sample`: the answers now come from the set `members` by its own
        aggregator, so the counts start afresh against that set's `grid` (the old ones are kept in
        the summary)."""
        self.before.append({**self.summary(), "until_sample": sample, "members_after": list(members)})
        self.grid, self.counts, self.k, self.n = grid, {}, 0, 0

    def bound(self, indices) -> float | None:
        """The pooled upper bound of combination `indices`: calibration and shadows (None without a grid)."""
        if self.grid is None:
            return None
        k, n = self.counts.get(tuple(indices), (0, 0))
        return self.grid.bound(tuple(indices), k, n)

    def summary(self) -> dict:
        k, n = (sum(c[i] for c in self.counts.values()) for i in (0, 1))
        rows = [{"setting": list(c), "shadows": n_c, "disagreements": k_c, "bound": self.bound(c),
                 "calibration_losses": None if self.grid is None else int(self.grid.losses[self.grid.key(c)])}
                for c, (k_c, n_c) in sorted(self.counts.items())]
        return {"shadows": n, "disagreements": k, "estimate": k / n if n else None,
                "upper_bound": upper_bound(k, n, self.delta) if n else None,
                "epsilon": self.epsilon, "delta": self.delta,
                "calibration_samples": None if self.grid is None else self.grid.n, "per_setting": rows,
                **({"before_loss": self.before} if self.before else {})}
