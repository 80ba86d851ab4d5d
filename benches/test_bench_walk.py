"""One sample through a student to its exit on a GPU: the sync-free graph walk (torch.cond on the
exit gate's decision, captured in one CUDA graph) against the eager walk that reads each exit's
decision back to the host. Runs under `benches/gpu_check.sh`; skipped without a GPU."""
import time

import pytest
import torch

import bench_common
from distree.inference.graph_walk import GraphWalk, capture
from distree.inference.step import DeviceStep
from distree.models.student import Student
from distree.policies import LocalConfidencePolicy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def _per_sample_s(call, xs) -> float:
    torch.cuda.synchronize()
    began = time.perf_counter()
    for x in xs:
        call(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - began) / len(xs)


def test_cuda_graph_walk_against_the_eager_walk_at_batch_1():
    torch.manual_seed(0)
    student = Student(10, 1).cuda().eval().to(memory_format=torch.channels_last)
    # thresholds at which about half the samples of a random student stop early
    step = DeviceStep(student, 0, LocalConfidencePolicy(), torch.full((5,), 0.12), torch.zeros(10))
    xs = [torch.randn(1, 1, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last) for _ in range(64)]
    index = torch.zeros(1, dtype=torch.long, device="cuda")
    walk = GraphWalk(step, xs[0])
    graph, static_x, (u, exit) = capture(walk, xs[0])

    def replay(x):
        static_x.copy_(x)
        graph.replay()

    with torch.inference_mode():
        eager_s = _per_sample_s(lambda x: step.run(x, index), xs)
    torch.cuda.set_sync_debug_mode("error")  # a host read inside the replayed walk would raise
    try:
        graph_s = _per_sample_s(replay, xs)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    agree = 0
    with torch.inference_mode():
        for x in xs:
            replay(x)
            _, want = step.run(x, index)
            agree += int(exit.item() == want.item())
    bench_common.GPU_LINES.append(f"walk B=1: CUDA graph {1e6 * graph_s:.0f} us, eager with host reads "
                                  f"{1e6 * eager_s:.0f} us ({eager_s / graph_s:.1f}x); exits agree {agree}/{len(xs)}")
    assert agree == len(xs)
