"""GPU checks of the exit head that the test suite does not make, for benches/gpu_check.sh.

For each GPU backend (cuda, triton): HBM bandwidth achieved at B = 128 on the student's exit
shapes against the device's peak, kernel launches per forward (torch.profiler), no host
synchronisation in forward + backward (set_sync_debug_mode("error")), and CUDA-graph capture
and replay checked against the reference. Prints one line per result; exits 1 if a check
fails. Bandwidth is reported against the 80 % goal, not enforced.
"""
import sys

import torch

import distree_kernels

SHAPES = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
B, D = 128, 64
DEV = "cuda"
FAILURES: list[str] = []


def report(ok: bool, line: str) -> None:
    print(("ok    " if ok else "FAIL  ") + line, flush=True)
    if not ok:
        FAILURES.append(line)


def make_inputs(shape, dtype=torch.float32, channels_last=False, requires_grad=False, seed=0):
    C, H, W = shape
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, device=DEV, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(D, C, generator=g, device=DEV, dtype=dtype) / C ** 0.5
    bias = torch.randn(D, generator=g, device=DEV, dtype=dtype)
    ref = torch.randn(B, D, generator=g, device=DEV, dtype=dtype)
    threshold = torch.tensor(1.1, device=DEV)
    return x.requires_grad_(requires_grad), w.requires_grad_(requires_grad), bias, ref, threshold


def peak_bandwidth() -> tuple[float, float]:
    """(the memory's nominal peak, what a device-to-device copy reaches), bytes per second."""
    props = torch.cuda.get_device_properties(0)
    nominal = 2 * props.memory_clock_rate * 1e3 * props.memory_bus_width / 8  # DDR; kHz, bits
    a = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    b = torch.empty_like(a)
    seconds = graph_seconds(lambda i: b.copy_(a), copies=1, reps=10)
    return nominal, 2 * a.numel() / seconds


def graph_seconds(call, copies: int, reps: int) -> float:
    """Seconds per call of call(i), i over `copies` buffer sets, replayed from one CUDA graph
    so that launch overhead does not count and the inputs do not stay in L2."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(copies):
            call(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            call(i)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e-3 / (reps * copies)


def check_bandwidth(backend: str, nominal: float, copy: float) -> None:
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    for dtype in (torch.float32, torch.bfloat16):
        for channels_last in (False, True):
            for shape in SHAPES:
                first = make_inputs(shape, dtype, channels_last)
                nbytes = first[0].numel() * first[0].element_size()
                copies = max(2, -(-4 * l2 // nbytes))  # 4x L2 of x in all
                xs = [first[0]] + [torch.randn_like(first[0]) for _ in range(copies - 1)]
                rest = first[1:]
                with torch.inference_mode():
                    s = graph_seconds(
                        lambda i: distree_kernels.exit_head(xs[i], *rest, backend=backend), copies, reps=20)
                bw = nbytes / s
                layout = "channels_last" if channels_last else "nchw"
                goal = "80% goal met" if bw >= 0.8 * nominal else "below the 80% goal"
                print(f"bandwidth {backend:6} {str(dtype)[6:]:8} {layout:13} {shape}: {s * 1e6:6.2f} us, "
                      f"{bw / 1e12:5.2f} TB/s = {bw / nominal:4.0%} of peak, {bw / copy:4.0%} of copy ({goal})",
                      flush=True)
                del xs


def check_launches(backend: str) -> None:
    args = make_inputs(SHAPES[2])
    with torch.inference_mode():
        distree_kernels.exit_head(*args, backend=backend)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            distree_kernels.exit_head(*args, backend=backend)
            torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    # One launch is the CUDA kernel's design; Triton's count is reported for comparison.
    report(len(names) == 1 or backend != "cuda", f"launches {backend}: {len(names)} per forward {names}")


def check_no_sync(backend: str) -> None:
    def step(args):
        x, w, bias, ref, t = args
        feat, _score, _exit = distree_kernels.exit_head(x, w, bias, ref, t, backend=backend)
        feat.sum().backward()

    step(make_inputs(SHAPES[1], requires_grad=True))  # compile and warm up outside the check
    args = make_inputs(SHAPES[1], requires_grad=True)  # made outside too: only the op is checked
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        step(args)
        report(True, f"no sync {backend}: forward + backward under set_sync_debug_mode('error')")
    except RuntimeError as err:
        report(False, f"no sync {backend}: {err}")
    finally:
        torch.cuda.set_sync_debug_mode(0)


def check_graph(backend: str) -> None:
    shape = (13, 3, 5)  # odd sizes: the masked paths
    x, w, bias, ref, t = make_inputs(shape, channels_last=True)
    run = lambda: distree_kernels.exit_head(x, w, bias, ref, t, backend=backend)  # noqa: E731
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        feat, score, exit_ = run()
    # New data in the captured buffers: x, a ref near feat's direction (well-conditioned
    # scores), and a threshold between two scores so that half the samples exit.
    x.copy_(make_inputs(shape, seed=1)[0])
    ref.copy_(distree_kernels.exit_head_reference(x, w, bias)[0] + 0.3 * torch.randn_like(ref))
    scores = distree_kernels.exit_head_reference(x, w, bias, ref)[1].sort().values
    t.fill_(float((scores[B // 2 - 1] + scores[B // 2]) / 2))
    graph.replay()
    torch.cuda.synchronize()
    want = distree_kernels.exit_head_reference(x, w, bias, ref, t)
    try:
        torch.testing.assert_close(feat, want[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(score, want[1], rtol=1e-5, atol=1e-5)
        assert torch.equal(exit_, want[2]), f"exit differs in {(exit_ != want[2]).sum()} samples"
        report(True, f"cuda graph {backend}: replay on new x, ref and threshold matches the reference")
    except AssertionError as err:
        report(False, f"cuda graph {backend}: {err}")


def main() -> int:
    backends = [b for b in ("cuda", "triton") if distree_kernels.unavailable_reason(b, DEV) is None]
    for b in ("cuda", "triton"):
        report(b in backends, f"backend {b}: {distree_kernels.unavailable_reason(b, DEV) or 'available'}")
    props = torch.cuda.get_device_properties(0)
    print(f"device {props.name}, {props.multi_processor_count} SMs, L2 {props.L2_cache_size >> 20} MiB")
    nominal, copy = peak_bandwidth()
    print(f"peak {nominal / 1e12:.2f} TB/s nominal, {copy / 1e12:.2f} TB/s by a 1 GiB copy")
    for backend in backends:
        for check in (check_launches, check_no_sync, check_graph):
            check(backend)
        check_bandwidth(backend, nominal, copy)
    print(f"{len(FAILURES)} check(s) failed" if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
