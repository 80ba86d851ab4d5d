"""pytest-benchmark of the exit head: every backend against the eager composition of the same
math and against torch.compile(fullgraph=True) of it, at the student's exit shapes with a
projection to 64, forward (inference mode) and forward+backward."""
import pytest
import torch
import torch.nn.functional as F

import distree_kernels
from conftest import RESULTS

SHAPES = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
D = 64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OP_BACKENDS = [b for b in ("cpp", "cuda", "triton") if distree_kernels.unavailable_reason(b, DEVICE) is None
               and not (b == "triton" and DEVICE == "cpu")]  # the CPU interpreter is no benchmark


def eager_exit_head(x, weight, bias, ref, threshold):
    """The unfused composition: what a model does without the op."""
    feat = F.linear(torch.relu(x).mean((2, 3)), weight, bias)  # (B, D)
    score = 1 / F.cosine_similarity(feat, ref, dim=1)  # (B,)
    return feat, score, score > threshold


COMPILED = torch.compile(eager_exit_head, fullgraph=True)


def variant(name):
    if name == "eager":
        return eager_exit_head
    if name == "compiled":
        return COMPILED
    return lambda *args: distree_kernels.exit_head(*args, backend=name)


def inputs(shape, B, requires_grad):
    C, H, W = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=g).to(DEVICE).requires_grad_(requires_grad)
    w = (torch.randn(D, C, generator=g) / C ** 0.5).to(DEVICE).requires_grad_(requires_grad)
    b = torch.zeros(D, device=DEVICE, requires_grad=requires_grad)
    ref = torch.randn(B, D, generator=g).to(DEVICE)
    return x, w, b, ref, torch.tensor(1.1, device=DEVICE)


def sync():
    if DEVICE == "cuda":  # time the kernels, not their launch
        torch.cuda.synchronize()


def record(benchmark, key, name, nbytes):
    median = benchmark.stats.stats.median
    benchmark.extra_info["GB/s"] = round(nbytes / median / 1e9, 1)
    RESULTS.setdefault(key, {})[name] = (median, nbytes)


@pytest.mark.parametrize("name", ["eager", "compiled"] + OP_BACKENDS)
@pytest.mark.parametrize("B", [1, 128])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward(benchmark, shape, B, name):
    args = inputs(shape, B, requires_grad=False)
    fn = variant(name)
    benchmark.group = f"fwd {shape} B={B}"

    def step():
        fn(*args)
        sync()

    # Inference mode is entered once, outside the timed calls, so that at B = 1 the ratios
    # compare the exit heads rather than the harness.
    with torch.inference_mode():
        for _ in range(3):  # compile and warm caches outside the timing
            step()
        benchmark(step)
    record(benchmark, (shape, B, "fwd"), name, args[0].numel() * args[0].element_size())


@pytest.mark.parametrize("name", ["eager", "compiled"] + OP_BACKENDS)
@pytest.mark.parametrize("B", [1, 128])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward(benchmark, shape, B, name):
    x, w, b, ref, t = inputs(shape, B, requires_grad=True)
    fn = variant(name)
    grad = torch.ones(B, D, device=DEVICE)
    benchmark.group = f"fwd+bwd {shape} B={B}"

    def step():
        feat, _, _ = fn(x, w, b, ref, t)
        x.grad = w.grad = b.grad = None
        feat.backward(grad)
        sync()

    for _ in range(3):
        step()
    benchmark(step)
    # forward reads x, backward reads x again and writes grad_x
    record(benchmark, (shape, B, "fwd+bwd"), name, 3 * x.numel() * x.element_size())
