"""Thresholds that follow the devices: a latency target held per device, and a shadow accuracy check.

The aggregator owns both and tells a device its setting (an index on its policy's path) with a
THRESHOLDS message; a device never moves by itself.

Latency (`Controller`): per device, the latencies of its recent answers (from the moment the
sample left the aggregator to the moment that device's evidence arrived; the deadline where it
never did), counted only under the setting in force, so a move is judged on what it did. Its
budget is the target less the aggregator's own share (the recent median time from the last
device's evidence to the answer), as the devices work in parallel. It moves one step:
- cheaper as soon as `react` answers under the setting put their P-th percentile over budget;
- back toward the conservative end once a full window of answers under the setting predicts
  that the conservative neighbour would be under `slack` x budget; never cheaper than `cap`
  (the shadow check's limit).
The prediction adds to the percentile now the compute the conservative neighbour would add:
the device's median compute time now (each FEATURE reports it) times the ratio of the two
settings' median compute times measured around the last move between them, less one. A slow
device is slow at every setting alike, so the compute ratio holds through a slowdown (the
messages' time, which does not slow, is left out of it): a device does not step back into a
setting it has just left for being too slow, yet it does step back once the slowdown ends.
Without a measured ratio the prediction is the percentile itself, and so it is after 3 windows
at one setting (a ratio measured as the device's pace changed, say a slowdown that ended just as
it moved, must not hold it cheap for long). The asymmetry is the hysteresis: a step that breaks the target is undone
within a few samples, a step back waits for a full window of evidence. A step back that has to
be undone anyway doubles the wait before the next one (up to 8 windows); one that holds resets it.

Accuracy (`ShadowCheck`): a fraction of samples also runs to exit 7 on every device; a shadow
disagrees when the adaptive answer differs from the full-depth one (the consistency risk, which
needs no labels). The check acts when the disagreements since its last action make "risk <=
epsilon" implausible: P(Binom(n, epsilon) >= k) <= delta, the one-sided exact test at the
certificate's own delta. Then every device steps back toward the conservative end and none may go
cheaper than the new cap; the counts restart for the new settings. The report gives the estimate
k/n over the whole run with its Clopper-Pearson upper bound at 1 - delta (`distree.risk.upper_bound`).

Why a test, not "upper bound <= epsilon": with 2% of samples as shadows a run of 900 has 18, and
0 of 18 already bounds the risk only at 12% (delta 0.1); an epsilon of 1% needs about 230 shadows
before any upper bound falls below it, so that rule would hold every device at the conservative
end for 11,500 samples. The certificate from calibration is what licenses the path; the shadows
watch for the deployment drifting away from it.
"""
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from distree.risk import p_value, upper_bound

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


class Controller:
    """The per-device settings of one policy's path of `length` settings, for N devices."""

    def __init__(self, config: AdaptConfig, num_devices: int, length: int):
        self.config, self.length, self.cap = config, length, length - 1
        self.target_s, self.healthy = config.target_s, []  # healthy: latencies measured for a relative target
        self.devices = [DeviceState(relax_wait=config.window) for _ in range(num_devices)]
        self.overhead = deque(maxlen=config.window)  # seconds from the last evidence to the answer

    @property
    def indices(self) -> list[int]:
        return [d.index for d in self.devices]

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
        if d.since >= c.react and p > budget and d.index < self.cap:
            if d.relaxed:  # the step back did not hold: wait longer before the next
                d.relax_wait = min(2 * d.relax_wait, MAX_RELAX_WINDOWS * c.window)
            return self._move(d, d.index + 1, relaxed=False)
        if d.relaxed and d.since >= d.relax_wait:  # the step back held for a full wait
            d.relaxed, d.relax_wait = False, c.window
        stale = d.since >= RATIO_WINDOWS * c.window  # a ratio from long ago may be a transient's: try anyway
        ratio = 1.0 if stale else d.ratios.get(d.index - 1, 1.0)
        predicted = p + compute * max(0.0, ratio - 1)  # at the conservative neighbour
        if d.since >= max(d.relax_wait, c.window) and predicted < c.slack * budget and d.index > 0:
            return self._move(d, d.index - 1, relaxed=True)
        return None

    def limit(self, cap: int) -> dict[int, int]:
        """No device cheaper than setting `cap` from now on; {device: new setting} for those that move."""
        self.cap = cap
        return {i: self._move(d, cap, relaxed=False) for i, d in enumerate(self.devices) if d.index > cap}

    def _move(self, d: DeviceState, index: int, relaxed: bool) -> int:
        d.left = (d.index, float(np.median(d.computes))) if d.computes else None
        d.index, d.relaxed, d.since = index, relaxed, 0
        d.latencies.clear()
        d.computes.clear()
        return index


class ShadowCheck:
    """Disagreement of the adaptive answer with the full-depth one, on the shadow samples."""

    def __init__(self, epsilon: float, delta: float):
        self.epsilon, self.delta = epsilon, delta
        self.k = self.n = 0  # since the last action
        self.total_k = self.total_n = 0

    def add(self, disagrees: bool) -> tuple[int, int] | None:
        """Count one shadow; (disagreements, shadows) since the last action when they exceed epsilon
        significantly (the caller then steps back and the counts restart), else None."""
        self.k, self.n = self.k + disagrees, self.n + 1
        self.total_k, self.total_n = self.total_k + disagrees, self.total_n + 1
        if self.k == 0 or 1 - p_value(self.k - 1, self.n, self.epsilon) > self.delta:  # P(X >= k) > delta
            return None
        fired, self.k, self.n = (self.k, self.n), 0, 0
        return fired

    def summary(self) -> dict:
        n, k = self.total_n, self.total_k
        return {"shadows": n, "disagreements": k, "estimate": k / n if n else None,
                "upper_bound": upper_bound(k, n, self.delta) if n else None,
                "epsilon": self.epsilon, "delta": self.delta}
