"""Times the cpp backend's pool (exit_head without projection or ref: pool + copy-out) against
x.sum() over the same data, at the student's exit shapes, B = 1 and 128, contiguous and
channels_last, with 2 threads and 1. Run before and after a change to the pooling code:
`.venv/bin/python benches/time_pool.py` (medians in microseconds, inference mode)."""
import statistics
import time

import torch

import distree_kernels  # noqa: F401  registers torch.ops.distree

SHAPES = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def median_us(fn, repeats=400):
    for _ in range(20):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main():
    op = torch.ops.distree.exit_head
    t = torch.tensor(1.0)
    print("| threads | B | shape | layout | pool us | x.sum() us |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for threads in (2, 1):
            torch.set_num_threads(threads)
            for B in (128, 1):
                for shape in SHAPES:
                    for layout in (torch.contiguous_format, torch.channels_last):
                        x = torch.randn(B, *shape).contiguous(memory_format=layout)  # (B, C, H, W)
                        pool = median_us(lambda: op(x, None, None, None, t))
                        total = median_us(lambda: x.sum())
                        name = "contiguous" if layout == torch.contiguous_format else "channels_last"
                        print(f"| {threads} | {B} | {shape} | {name} | {pool:.1f} | {total:.1f} |")


if __name__ == "__main__":
    main()
