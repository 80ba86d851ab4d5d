"""The sync-free walk: one sample through a student to its exit as one graph.

`DeviceStep.run` reads one value per exit back to the host (did the sample stop?), which on a
CPU costs a microsecond but on a GPU waits for the device. `GraphWalk` instead chains the
stages with `torch.cond` on the fused exit gate's decision: each stage after exit 1 runs only
while the sample has not stopped, and the exit's evidence and index are selected on the
device. The whole walk traces with `torch.compile(fullgraph=True)`, and on CUDA it can be
captured once in a CUDA graph whose conditional nodes skip the remaining stages, so a replay
runs a sample to its exit with nothing read back by the host (`capture`).

The conds are flat, one per stage, not nested: a skipped stage returns zeros of its output's
shape, which keeps tracing linear in the number of stages.
"""
import torch
from torch import nn

from distree.inference.step import DeviceStep, GateArguments
from distree.policies import LAST_EXIT
from distree_kernels import exit_gate


class GraphWalk(nn.Module):
    """DeviceStep `step`'s walk for one sample x (1, C, H, W) -> (u (1, K), exit () int64, 0-based).

    The step's policy must decide in the fused op (a policy with an exit-gate rule) or never
    exit early (last-exit); it is the same decision as `step.run`'s, with the same thresholds,
    or with `thresholds` (5,) where forward is given them (an input of the traced graph, so an
    export can move its setting without being exported again).
    """

    def __init__(self, step: DeviceStep, x: torch.Tensor):
        super().__init__()
        if step.policy.exits_early and any(step.gates[j] is None for j in range(1, LAST_EXIT)):
            raise ValueError(f"policy {step.policy.name!r} is not decided by the exit gate; "
                             "GraphWalk runs policies with an exit-gate rule, or last-exit")
        self.step = step
        with torch.inference_mode():  # the shape and layout each stage gives, for the skipped branches
            self.outputs = [(tuple(h.shape), _memory_format(h)) for h in step.student(x)[1]]

    def forward(self, x: torch.Tensor, thresholds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        student, gates = self.step.student, self.step.gates
        if thresholds is not None:  # exit j decides against thresholds[j - 1]
            gates = [g if g is None else g._replace(threshold=thresholds[j - 1]) for j, g in enumerate(gates)]
        if not self.step.policy.exits_early:
            walk = student.walk(x)
            for _ in walk:
                pass
            return walk.head(score=False)[0], torch.tensor(LAST_EXIT, device=x.device)
        walk = student.walk(x)
        stages = iter(walk)
        next(stages)
        first = walk.head(score=False)[0]  # (1, K)
        h, previous, u_out = walk.h, first, first
        exit_out = torch.zeros((), dtype=torch.long, device=x.device)
        running = torch.ones((), dtype=torch.bool, device=x.device)
        for j in range(1, LAST_EXIT + 1):
            h, previous, u_out, exit_out, running = torch.cond(
                running, self._stage(j, first, gates[j]), self._skip(j),
                (h, previous, u_out, exit_out))
        return u_out, exit_out

    def _stage(self, j: int, first: torch.Tensor, gate: GateArguments | None):
        """Runs stage j and its exit; the sample stops here if the gate says so (or at exit 7)."""
        stage, head = self.step.student.stages[j], self.step.student.heads[j]

        def run(h, previous, u_out, exit_out):
            h = stage(h)  # (1, C_j, H_j, W_j)
            if gate is None:  # exit 7
                u, stop = head(h)[0], torch.ones((), dtype=torch.bool, device=h.device)
            else:
                u, _, stops = _exit_gate(h, head, first, previous, gate)
                stop = stops[0]
            return (h, u, torch.where(stop, u, u_out), torch.where(stop, j, exit_out), ~stop)
        return run

    def _skip(self, j: int):
        """What stage j gives a sample that has already stopped: zeros, and its evidence unchanged."""
        shape, memory_format = self.outputs[j]

        def skip(h, previous, u_out, exit_out):
            zeros = h.new_zeros(shape).contiguous(memory_format=memory_format)
            done = torch.zeros_like(exit_out, dtype=torch.bool)
            return zeros, previous.clone(), u_out.clone(), exit_out.clone(), done
        return skip


def _exit_gate(h, head, first, previous, gate: GateArguments):
    return exit_gate(h, head.weight, head.bias, first, previous, *gate, backend=head.backend)


def _memory_format(h: torch.Tensor) -> torch.memory_format:
    channels_last = h.dim() == 4 and h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def capture(walk: GraphWalk, x: torch.Tensor, warmup: int = 3):
    """A CUDA graph of walk on a static input like x (1, C, H, W) on a GPU.

    Returns (graph, static_x, (u, exit)): copy a sample into static_x, replay, read u and exit.
    The conds become conditional nodes, so skipped stages do not run on the device.
    """
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(warmup):
            walk(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        out = walk(static_x)
    return graph, static_x, out
