"""pytest-benchmark of the exit gate: each backend's exit_gate (rule "gate", K = 10, F = 15)
against one bare exit_head call at the same shape (what the fused decision adds) and against
the eager composition it replaces (exit_head, then the learned gate's Python features, sigmoid
and compare), at the student's exit shapes, B = 1 and 128, forward in inference mode."""
import pytest
import torch

import distree_kernels
from conftest import RESULTS
from distree.policies.base import LocalInputs
from distree.policies.learned_gate import LearnedGatePolicy

SHAPES = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
K = 10
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OP_BACKENDS = [b for b in ("cpp", "cuda", "triton") if distree_kernels.unavailable_reason(b, DEVICE) is None
               and not (b == "triton" and DEVICE == "cpu")]  # the CPU interpreter is no benchmark


def inputs(shape, B):
    """(x, weight, bias, first, previous, bias_share, gate_weight, gate_bias, threshold)."""
    C, H, W = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=g)  # (B, C, H, W)
    w = torch.randn(K, C, generator=g) / C ** 0.5  # (K, C)
    b = torch.zeros(K)  # (K,)
    first, previous = torch.randn(2, B, K, generator=g)  # (B, K) each
    bias_share = torch.randn(K, generator=g) / 4  # (K,)
    gate_weight, gate_bias = torch.randn(5 + K, generator=g), torch.tensor(0.1)  # (F,), 0-d
    args = (x, w, b, first, previous, bias_share, gate_weight, gate_bias, torch.tensor(0.5))
    return tuple(a.to(DEVICE) for a in args)


def eager_gate(x, w, b, first, previous, bias_share, gate_weight, gate_bias, threshold):
    """Today's path: the exit head op, then LearnedGatePolicy's score in Python, then compare."""
    feat, head_score, _ = distree_kernels.exit_head(x, w, b, first, threshold)
    policy = LearnedGatePolicy(gate_weight.view(1, 1, -1), gate_bias.view(1, 1))
    local = LocalInputs(u=feat, first=first, previous=previous, head_score=head_score,
                        bias_share=bias_share, index=torch.arange(0), student=0, exit=0)
    score = policy.score(local)  # (B,)
    return feat, score, score >= threshold


def variant(name):
    if name == "eager":
        return eager_gate
    if name == "exit_head":
        return lambda x, w, b, first, *rest: distree_kernels.exit_head(x, w, b, first, rest[-1])
    return lambda *args: distree_kernels.exit_gate(*args, "gate", inclusive=True, backend=name)


def sync():
    if DEVICE == "cuda":  # time the kernels, not their launch
        torch.cuda.synchronize()


@pytest.mark.parametrize("name", ["eager", "exit_head"] + OP_BACKENDS)
@pytest.mark.parametrize("B", [1, 128])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gate_forward(benchmark, shape, B, name):
    args = inputs(shape, B)
    fn = variant(name)
    benchmark.group = f"gate {shape} B={B}"

    def step():
        fn(*args)
        sync()

    with torch.inference_mode():
        for _ in range(3):
            step()
        benchmark(step)
    median = benchmark.stats.stats.median
    nbytes = args[0].numel() * args[0].element_size()
    RESULTS.setdefault((shape, B, "gate"), {})[name] = (median, nbytes)
