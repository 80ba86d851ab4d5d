"""pytest-benchmark of the exit head: every backend against the eager composition of the same
math and against torch.compile(fullgraph=True) of it, at the student's exit shapes with a
projection to 64, forward (inference mode) and forward+backward. On a GPU also the HBM
bandwidth each GPU backend reaches and its kernel launches per forward, which no test measures.
"""
import pytest
import torch
import torch.nn.functional as F

from bench_common import DEVICE, GPU_LINES, graph_seconds, peak_bandwidth, record, sync

import distree_kernels  # after bench_common, which sets TRITON_INTERPRET on a CPU-only machine

SHAPES = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
D = 64
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


GPU_BACKENDS = [b for b in ("cuda", "triton") if b in OP_BACKENDS and DEVICE == "cuda"]
gpu_backends = pytest.mark.parametrize("name", GPU_BACKENDS or [pytest.param("cuda", marks=pytest.mark.skip(
    reason="no GPU backend runs here"))])


def gpu_inputs(shape, dtype, channels_last):
    C, H, W = shape
    x = torch.randn(128, C, H, W, device="cuda", dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(D, C, device="cuda", dtype=dtype) / C ** 0.5
    bias = torch.randn(D, device="cuda", dtype=dtype)
    ref = torch.randn(128, D, device="cuda", dtype=dtype)
    return x, w, bias, ref, torch.tensor(1.1, device="cuda")


@gpu_backends
def test_gpu_bandwidth(name):
    """Forward bandwidth at B = 128 against the nominal peak and a 1 GiB copy (goal: 80 % of
    peak; reported, not enforced), with the inputs cycled through 4x L2 so none stays cached."""
    nominal, copy = peak_bandwidth()
    props = torch.cuda.get_device_properties(0)
    GPU_LINES.append(f"device {props.name}: peak {nominal / 1e12:.2f} TB/s nominal, "
                     f"{copy / 1e12:.2f} TB/s by a 1 GiB copy")
    for dtype in (torch.float32, torch.bfloat16):
        for channels_last in (False, True):
            for shape in SHAPES:
                first = gpu_inputs(shape, dtype, channels_last)
                nbytes = first[0].numel() * first[0].element_size()
                copies = max(2, -(-4 * props.L2_cache_size // nbytes))
                xs = [first[0]] + [torch.randn_like(first[0]) for _ in range(copies - 1)]
                rest = first[1:]
                with torch.inference_mode():
                    s = graph_seconds(lambda i: distree_kernels.exit_head(xs[i], *rest, backend=name),
                                      copies, reps=20)
                bw = nbytes / s
                layout = "channels_last" if channels_last else "nchw"
                goal = "80% goal met" if bw >= 0.8 * nominal else "below the 80% goal"
                GPU_LINES.append(f"bandwidth {name:6} {str(dtype)[6:]:8} {layout:13} {shape}: {s * 1e6:6.2f} us, "
                                 f"{bw / 1e12:5.2f} TB/s = {bw / nominal:4.0%} of peak, {bw / copy:4.0%} of copy "
                                 f"({goal})")


@gpu_backends
def test_gpu_launches_per_forward(name):
    """The CUDA kernel is one launch by design; Triton's count is reported for comparison."""
    args = gpu_inputs(SHAPES[2], torch.float32, False)
    with torch.inference_mode():
        distree_kernels.exit_head(*args, backend=name)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            distree_kernels.exit_head(*args, backend=name)
            torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    GPU_LINES.append(f"launches {name}: {len(names)} per forward {names}")
    assert len(names) == 1 or name != "cuda", names
