"""What one device computes: its student's stages, up to the exit its policy picks, per sample.

`DeviceStep.run` is the one walk to an exit: the engine's compacting and streaming modes, the
runtime's devices and the timing all use it, so the distributed predictions equal the
single-process ones bit for bit. A batch compacts after each decision exit (finished samples
leave it); one sample is a batch of one that stops its stages at its exit.

At a decision exit of a policy with an exit-gate rule, the fused op computes the evidence and
the decision in one pass and Python only acts on it: the one value read back to the host per
exit is how many samples stopped there (none in a batch means nothing else to do).
"""
from collections.abc import Iterator
from typing import NamedTuple

import torch

from distree.policies import LAST_EXIT, NUM_EXITS, LocalInputs, LocalPolicy


class GateArguments(NamedTuple):
    """What the fused exit gate takes at one decision exit besides the walk's own tensors, in
    `StudentWalk.decide`'s order."""
    bias_share: torch.Tensor | None  # (K,)
    gate_weight: torch.Tensor | None  # (F,)
    gate_bias: torch.Tensor | None  # ()
    threshold: torch.Tensor  # () float32, written in place by set_thresholds
    rule: str
    inclusive: bool


def stopped_count(stop: torch.Tensor) -> int:
    """How many of stop (b',) are set. One sample's flag is read as it is: at B = 1 a sum is a kernel
    launch that costs more than the whole exit decision beside a stage (13 us against 2 us here)."""
    return int(stop.item()) if stop.numel() == 1 else int(stop.sum())


class DeviceStep:
    """Student `index` of N with its policy and thresholds (5,); bias_share (K,) for local rules."""

    def __init__(self, student, index: int, policy: LocalPolicy, thresholds: torch.Tensor,
                 bias_share: torch.Tensor):
        self.student, self.index, self.policy = student, index, policy
        self.device = next(student.parameters()).device
        self.thresholds = thresholds.to(self.device, torch.float32).clone()  # (5,) its own: set_thresholds writes it
        self.bias_share = bias_share.to(self.device)
        self.gates = [self._gate_arguments(j) for j in range(NUM_EXITS)]
        self.kernels = student.exit_kernels(self.device)  # its heads resolved once, for every walk

    def _gate_arguments(self, j: int) -> GateArguments | None:
        """The exit gate's arguments at decision exit j (0-based 1..5), or None where no op decides."""
        if not 1 <= j < LAST_EXIT or getattr(self.policy, "rule", None) is None:
            return None
        weight, bias = self.policy.gate(self.index, j)
        to = (lambda t: None if t is None else t.to(self.device, torch.float32).contiguous())
        return GateArguments(to(self.bias_share), to(weight), to(bias), self.thresholds[j - 1].clone(),
                             self.policy.rule, self.policy.inclusive)

    def set_thresholds(self, thresholds: torch.Tensor) -> None:
        """Decide with thresholds (5,) from the next sample on, in place: the fused op's 0-d thresholds
        are the same tensors between samples, so nothing is rebuilt (the runtime's adaptation)."""
        self.thresholds.copy_(thresholds)
        for j, gate in enumerate(self.gates):
            if gate is not None:
                gate.threshold.copy_(thresholds[j - 1])

    @torch.inference_mode()
    def run_one(self, x: torch.Tensor, sample: int) -> tuple[torch.Tensor, int]:
        """x (C, H, W) -> (u (K,) float32 to send, 0-based exit), decided by this device alone.

        Under inference mode, as the engine runs: under no_grad every op still passes its autograd
        kernel, and the exit gate's is Python (about 6 us per decision at B = 1 here)."""
        u, exits = self.run(x.unsqueeze(0), torch.tensor([sample], device=self.device))
        return u[0].float().cpu(), int(exits[0])

    def run(self, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) with sample ids index (B,) -> (u (B, K) at each sample's exit, exits (B,) 0-based).

        While every sample runs, nothing is gathered: where they all stop at one exit (one sample
        always does) its evidence is the answer as it is. Once some stop before the others, their
        evidence is written into (B, K) and the batch goes on with the rest.
        """
        b, walk, skip_heads = x.shape[0], self.student.walk(x, self.kernels), not self.policy.exits_early
        ids = sent = exits = None  # (b',) rows of x still running, (B, K), (B,): once some have stopped
        for j in walk:
            if j < LAST_EXIT and skip_heads:
                continue  # last-exit skips the heads it would never use
            u, stop = self._exit(walk, j, index if ids is None else index[ids])  # (b', K), (b',) or None
            running = u.shape[0]  # not len(u): Tensor.__len__ is Python with a dispatch check
            stopped = running if j == LAST_EXIT else 0 if stop is None else stopped_count(stop)  # the one host read
            if stopped == running:  # every running sample ends here
                if ids is None:
                    return u, torch.full((b,), j, dtype=torch.long, device=x.device)
                sent[ids], exits[ids] = u, j
                return sent, exits
            if stopped:
                if ids is None:
                    ids = torch.arange(b, device=x.device)
                    sent = u.new_zeros(b, u.shape[1])
                    exits = torch.full((b,), LAST_EXIT, dtype=torch.long, device=x.device)
                order = torch.argsort(stop.to(torch.uint8), stable=True)  # (b',) running samples first
                keep, done = order[:running - stopped], order[running - stopped:]
                sent[ids[done]], exits[ids[done]] = u[done], j
                walk.keep(keep)
                ids = ids[keep]
        raise AssertionError("a walk ends at its last exit")

    def _exit(self, walk, j: int, index: torch.Tensor):
        """Exit j's evidence (b', K) and stop mask (b',) (None at exits 1 and 7, which never decide),
        for the running samples, whose ids are index (b',)."""
        gate = self.gates[j]
        if gate is not None:
            u, _, stop = walk.decide(*gate)  # the fused op decides
            return u, stop
        u, _, _ = walk.head()
        if not 1 <= j < LAST_EXIT:
            return u, None
        inputs = LocalInputs(u, walk.first, walk.previous, self.bias_share, index, self.index, j)
        return u, self.policy.stops(inputs, self.thresholds, j)  # a policy scored in Python

    @torch.inference_mode()
    def per_exit(self, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """x (C, H, W) -> (exit, u (K,)) at exits 2..7, for the aggregator to decide on.

        Exit 1 never stops a sample, so it sends nothing; the caller stops iterating when the
        aggregator says stop.
        """
        walk = self.student.walk(x.unsqueeze(0), self.kernels)  # (1, C, H, W)
        for j in walk:
            if j >= 1:
                yield j, walk.head()[0][0].float().cpu()  # (K,)
