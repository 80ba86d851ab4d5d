"""One sample through one student, in each form a device can run it, on one thread.

The forms: the exported ONNX file in an ONNX Runtime session, the AOTInductor package
(`distree export --format onnx|pt2`), the sync-free walk (`GraphWalk`) under
`torch.compile(fullgraph=True)`, and the eager walk the PyTorch devices run (`DeviceStep.run_one`).
Each form runs the same first SAMPLES test samples of a trained run, so each sample leaves at
the same exit in every form (checked); rounds alternate between the forms so that they meet
the same machine load, and the median round is kept. Needs a trained run with calibrated
thresholds (DISTREE_BENCH_RUN, default runs/demo from `make demo`); skipped without one.
"""
import os
import statistics
import time
from pathlib import Path

import pytest
import torch

import bench_common

RUN = Path(os.environ.get("DISTREE_BENCH_RUN", "runs/demo"))
SAMPLES, ROUNDS = 200, 5

pytestmark = pytest.mark.skipif(not (RUN / "report.json").exists(),
                                reason=f"no evaluated run at {RUN} (make demo, or set DISTREE_BENCH_RUN)")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{format: export folder} of RUN under its calibrated distree thresholds."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from distree.export.run import export_run

    root = tmp_path_factory.mktemp("exports")
    return {fmt: export_run(RUN, fmt, root / fmt, progress=lambda line: None)[0] for fmt in ("onnx", "pt2")}


def _forms(i: int, walk, exports: dict) -> dict:
    """name -> sample runner x (1, C, H, W) -> 0-based exit, for student i."""
    from distree.artifacts.onnx_student import OnnxStudent
    from distree.export.pt2_export import load_pt2

    onnx = OnnxStudent(exports["onnx"] / f"student{i}.onnx", threads=1)
    pt2 = load_pt2(exports["pt2"] / f"student{i}.pt2")
    compiled = torch.compile(walk, fullgraph=True)
    return {"onnxruntime": lambda x: onnx.run(x.numpy())[1],
            "aoti": lambda x: int(pt2(x)[1]),
            "compiled walk": lambda x: int(compiled(x)[1]),
            "eager walk": lambda x: walk.step.run_one(x[0], 0)[1]}


def _seconds_per_sample(run, xs) -> float:
    began = time.perf_counter()
    for x in xs:
        run(x)
    return (time.perf_counter() - began) / len(xs)


def test_student_latency_in_each_deployable_form(exports):
    from distree.export.walks import export_plan
    from distree.samples import load_samples

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plan = export_plan(RUN)
        x = load_samples(RUN, "test", SAMPLES).x
        xs = [x[s:s + 1].contiguous() for s in range(len(x))]  # (1, C, H, W) each
        bench_common.EXPORT_LINES.extend([
            f"per-sample latency, one thread, {len(xs)} test samples of {RUN}, median of {ROUNDS} rounds:",
            "| student | mean exit | onnxruntime us | aoti us | compiled walk us | eager walk us "
            "| eager / onnxruntime | eager / aoti | eager / compiled |", "|---|---|---|---|---|---|---|---|---|"])
        with torch.inference_mode():
            for i, walk in enumerate(plan.walks):
                forms = _forms(i, walk, exports)
                exits = {name: [run(x) for x in xs] for name, run in forms.items()}  # also warms each form up
                assert all(e == exits["eager walk"] for e in exits.values()), f"student {i}: the forms' exits differ"
                rounds = {name: [] for name in forms}
                for _ in range(ROUNDS):
                    for name, run in forms.items():
                        rounds[name].append(_seconds_per_sample(run, xs))
                us = {name: 1e6 * statistics.median(r) for name, r in rounds.items()}
                eager = us["eager walk"]
                bench_common.EXPORT_LINES.append(
                    f"| {i} | {1 + statistics.mean(exits['eager walk']):.2f} | {us['onnxruntime']:.0f} | "
                    f"{us['aoti']:.0f} | {us['compiled walk']:.0f} | {eager:.0f} | {eager / us['onnxruntime']:.2f} "
                    f"| {eager / us['aoti']:.2f} | {eager / us['compiled walk']:.2f} |")
    finally:
        torch.set_num_threads(threads)
