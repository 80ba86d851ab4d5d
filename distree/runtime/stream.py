"""One policy's stream in the aggregator: everything it holds about that policy, in one object.

A round is what the aggregator waits for at once: one message from every live device for a
sample (a local policy) or for one exit of it (a per-exit policy). Rounds are keyed
(sample, exit), the exit WHOLE for a local policy's, so a message finds its round by its own
fields.
"""
from dataclasses import dataclass, field

import torch

from distree.runtime.adaptive import Controller, ShadowCheck
from distree.plan import PolicySpec
from distree.runtime.policy_run import PolicyRun

WHOLE = -1  # the exit of a local policy's round: the whole sample


@dataclass
class Evidence:
    """What one device sent for a round."""

    exit: int  # 0-based exit it left at (or reached, per exit)
    u: torch.Tensor  # (D,) its evidence there
    compute_s: float  # its own compute time for the message
    arrived_s: float  # perf_counter time the aggregator filed it


@dataclass
class Shadow:
    """A shadow sample: its answer and every device's exit-7 evidence, compared once all are in."""

    to: set  # the devices it was sent to
    setting: list  # per device, the setting it was issued under
    u: dict = field(default_factory=dict)  # device -> exit 7's u (D,)
    pred: int | None = None  # the answer, once given


@dataclass
class Stream:
    """Policy `index` of the plan over the session: what it answered (run), and under a latency
    target its controller and shadow check; the rounds still open, the settings each sample in
    flight was issued under and the shadows not yet compared."""

    index: int
    spec: PolicySpec
    run: PolicyRun
    control: Controller | None = None
    check: ShadowCheck | None = None
    rounds: dict = field(default_factory=dict)  # (sample, exit) -> {device: Evidence}: what is still awaited
    issued: dict = field(default_factory=dict)  # sample -> settings per device it was issued under (-1: static)
    shadows: dict = field(default_factory=dict)  # sample -> Shadow
    setting: list = None  # static: per device, its index in spec.settings() (-1: the served thresholds)

    @property
    def adapting(self) -> bool:
        return self.control is not None

    def round_key(self, sample: int, exit: int) -> tuple[int, int]:
        """The round a message of (sample, exit) answers."""
        return (sample, exit if not self.spec.policy.local else WHOLE)

    def open_round(self, sample: int, exit: int = WHOLE) -> dict:
        """A new round: {device: Evidence}, filled as the devices' messages arrive."""
        self.rounds[(sample, exit)] = got = {}
        return got


def slowest(got: dict) -> float:
    """Seconds the slowest device that answered computed for its message: what the round waited for."""
    return max((e.compute_s for e in got.values()), default=0.0)
