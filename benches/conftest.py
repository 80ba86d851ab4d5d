"""Collects each benchmark's median and prints the targets of benches/README.md as ratios
measured in this same run (absolute times on a shared machine mean little)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# (shape, B, pass) -> {variant: (median seconds, bytes moved)}
RESULTS: dict[tuple, dict[str, tuple[float, int]]] = {}

# (pass, B) -> {baseline: least speed-up of the fastest op backend over it}
TARGETS = {("fwd", 128): {"eager": 3.0, "compiled": 1.5}, ("fwd", 1): {"eager": 8.0, "compiled": 8.0},
           ("fwd+bwd", 128): {"eager": 2.0}, ("fwd+bwd", 1): {"eager": 2.0}}
BASELINES = ("eager", "compiled")


def summary_lines() -> list[str]:
    lines = ["| shape (C,H,W) | B | pass | backend | median us | GB/s | x eager | x compiled | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (shape, B, kind), variants in sorted(RESULTS.items()):
        for name, (median, nbytes) in sorted(variants.items()):
            if name in BASELINES:
                continue
            ratios, verdicts = [], []
            for base in BASELINES:
                if base not in variants:
                    ratios.append("-")
                    continue
                r = variants[base][0] / median
                ratios.append(f"{r:.1f}")
                need = TARGETS.get((kind, B), {}).get(base)
                if need is not None:
                    verdicts.append(f"{'met' if r >= need else 'MISSED'} {base} >= {need:g}x")
            lines.append(f"| {shape} | {B} | {kind} | {name} | {median * 1e6:.1f} | {nbytes / median / 1e9:.1f} "
                         f"| {ratios[0]} | {ratios[1]} | {', '.join(verdicts) or '-'} |")
    return lines


def pytest_terminal_summary(terminalreporter):
    if RESULTS:
        terminalreporter.write_line("\nexit-head benchmark, ratios from this run:")
        for line in summary_lines():
            terminalreporter.write_line(line)
