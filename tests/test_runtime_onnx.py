"""Devices that serve exported ONNX students under ONNX Runtime (`--device-backend onnxruntime`).

A tiny run is exported with `distree export --format onnx`; a session whose devices run those
files must answer exactly as the PyTorch devices (and the single-process engine) do, and a
session that asks for something the export does not hold is refused before any process starts.
"""
import shutil

import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -r requirements.txt)")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install -r requirements.txt)")

from distree.errors import DistreeError  # noqa: E402
from distree.export.run import export_run  # noqa: E402
from distree.inference.evidence import bias_share  # noqa: E402
from distree.inference.step import DeviceStep  # noqa: E402
from distree.runtime.config import ServeConfig  # noqa: E402
from distree.samples import load_samples  # noqa: E402
from distree.runtime.onnx_device import onnx_steps  # noqa: E402
from distree.plan import make_plan, parse_thresholds  # noqa: E402
from distree.runtime.rank import check_options  # noqa: E402
from distree.run_dir import load_student_model  # noqa: E402
from test_runtime import SAMPLES, engine_predictions, make_run, median_thresholds, session  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(run, its distree thresholds as POLICY=T2,...,T6, the ONNX export folder)."""
    run = make_run(tmp_path_factory.mktemp("run2"), 2)
    thresholds = median_thresholds(run, "distree")
    out, _ = export_run(run, "onnx", tmp_path_factory.mktemp("export") / "onnx", "distree",
                        parse_thresholds([thresholds]), progress=lambda line: None)
    return run, thresholds, str(out)


def test_onnx_step_answers_as_the_pytorch_step(exported):
    run, thresholds, folder = exported
    plan = make_plan(["distree"], parse_thresholds([thresholds]), run)
    model = load_student_model(run)
    x = load_samples(run, "test", SAMPLES).x
    for i, student in enumerate(model.students):
        torch_step = DeviceStep(student, i, plan[0].policy, plan[0].thresholds, bias_share(model))
        onnx_step, = onnx_steps(folder, plan, i, threads=1)
        for s in range(SAMPLES):
            want_u, want_exit = torch_step.run_one(x[s], s)
            u, exit = onnx_step.run_one(x[s], s)
            assert exit == want_exit, (i, s)
            torch.testing.assert_close(u, want_u, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_onnxruntime_devices_predict_as_the_engine(exported, tmp_path):
    run, thresholds, folder = exported
    outcome, report = session(run, 2, tmp_path, ("distree",), thresholds=[thresholds],
                              device_backend="onnxruntime", artifacts=folder)
    assert outcome.codes == [0, 0, 0] and not outcome.killed
    p = report["policies"]["distree"]
    assert p["predictions"] == engine_predictions(run, "distree", thresholds)
    assert p["degraded"] == 0 and p["rejected_messages"] == 0
    assert sum(count > 0 for count in p["exit_histogram"][0]) >= 2  # the samples left at several exits


def _config(run, folder, policies=("distree",), thresholds=(), **options) -> ServeConfig:
    return ServeConfig(run=run, policies=list(policies), thresholds=list(thresholds), device_backend="onnxruntime",
                       artifacts=folder, **options)


def test_sessions_the_export_cannot_serve_are_refused(exported, tmp_path):
    run, thresholds, folder = exported
    with pytest.raises(DistreeError, match="needs --artifacts"):
        check_options(_config(run, None, thresholds=[thresholds]), 2)
    with pytest.raises(DistreeError, match="exported for policy distree"):
        check_options(_config(run, folder, policies=("distree", "confidence"), thresholds=[thresholds]), 2)
    with pytest.raises(DistreeError, match="thresholds"):
        check_options(_config(run, folder, thresholds=["distree=1.5"]), 2)
    with pytest.raises(DistreeError, match="not a distree export"):
        check_options(_config(run, str(tmp_path), thresholds=[thresholds]), 2)
    with pytest.raises(DistreeError, match="is for --device-backend onnxruntime"):
        check_options(ServeConfig(run=run, policies=["distree"], thresholds=[thresholds], artifacts=folder), 2)


def test_a_changed_artifact_is_refused(exported, tmp_path):
    run, thresholds, folder = exported
    copy = tmp_path / "onnx"
    shutil.copytree(folder, copy)
    with open(copy / "student1.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DistreeError, match="sha256"):
        check_options(_config(run, str(copy), thresholds=[thresholds]), 2)
