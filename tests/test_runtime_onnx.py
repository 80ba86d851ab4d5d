"""Devices that serve exported ONNX students under ONNX Runtime (`--device-backend onnxruntime`).

A tiny run is exported with `distree export --format onnx`; a session whose devices run those
files must answer exactly as the PyTorch devices (and the single-process engine) do, at the
exported thresholds and at any others the session feeds them (given, a surviving set's after a
loss, a latency target's moves), and a session that asks for something the export does not
hold is refused before any process starts.
"""
import json
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
from distree.artifacts.manifest import MANIFEST  # noqa: E402
from test_runtime import (EVENT_DEADLINE_MS, SAMPLES, engine_predictions, make_run, median_thresholds,  # noqa: E402
                          run2_certified, session)
from test_runtime import make_run_with_sets  # noqa: E402,F401 (run2_certified's)


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
    old = tmp_path / "old"  # an export from before thresholds were an input: its own only
    shutil.copytree(folder, old)
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["thresholds_input"] = None
    (old / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DistreeError, match="inside"):
        check_options(_config(run, str(old), thresholds=["distree=1.5"]), 2)
    with pytest.raises(DistreeError, match="latency target"):
        check_options(_config(run, str(old), thresholds=[thresholds], latency_target_ms=5.0), 2)
    check_options(_config(run, folder, thresholds=["distree=1.5"]), 2)  # fed to the devices
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


@pytest.mark.slow
def test_onnxruntime_devices_serve_thresholds_other_than_the_exported(exported, tmp_path):
    run, _, folder = exported
    moved = "distree=" + ",".join(["-inf", "inf", "inf", "inf", "inf"])  # every sample leaves at exit 2
    outcome, report = session(run, 2, tmp_path, ("distree",), thresholds=[moved], device_backend="onnxruntime",
                              artifacts=folder, deadline_ms=EVENT_DEADLINE_MS)
    assert outcome.codes == [0, 0, 0]
    p = report["policies"]["distree"]
    assert p["predictions"] == engine_predictions(run, "distree", moved)
    assert [counts[1] for counts in p["exit_histogram"]] == [SAMPLES, SAMPLES]


@pytest.fixture(scope="module")
def exported_certified(run2_certified, tmp_path_factory):
    out, _ = export_run(run2_certified, "onnx", tmp_path_factory.mktemp("export_certified") / "onnx", "distree",
                        progress=lambda line: None)  # the calibrated thresholds
    return run2_certified, str(out)


@pytest.mark.slow
def test_onnxruntime_device_left_alone_takes_its_sets_setting(exported_certified, tmp_path):
    """A THRESHOLDS message moves an ONNX Runtime device: after device 1 dies, device 0 runs every sample to
    exit 7 (its set's certified setting) and answers as the engine does there."""
    run, folder = exported_certified
    outcome, report = session(run, 2, tmp_path, faults=["kill:1@8"], deadline_ms=EVENT_DEADLINE_MS, window=1,
                              device_backend="onnxruntime", artifacts=folder, setting="certified-accuracy")
    assert outcome.codes[:2] == [0, 0]
    p = report["policies"]["distree"]
    assert [(mv["device"], mv["setting"]) for mv in p["moves"]] == [(0, 1)]
    moved = [k for k, s in enumerate(p["settings_per_sample"]) if s[0] == 1]
    assert moved and moved == list(range(moved[0], SAMPLES))
    alone_never = engine_predictions(run, "distree", "distree=" + ",".join(["inf"] * 5), members=(0,))
    assert [p["predictions"][k] for k in moved] == [alone_never[k] for k in moved]


@pytest.mark.slow
def test_onnxruntime_devices_follow_a_latency_target(exported, tmp_path):
    """A target no device can meet moves both along the given path to its cheapest setting; every sample
    whose devices ran one setting (each of the path's three, here) answers as the engine does at it, and
    the shadow samples (the graph run again to exit 7) come back."""
    run, _, folder = exported
    median = median_thresholds(run, "distree").split("=")[1].split(",")
    path = [["inf"] * 5, median, ["-inf"] * 5]
    (tmp_path / "path.json").write_text(json.dumps({"distree": path}))
    outcome, report = session(run, 2, tmp_path, ("distree",), thresholds=["distree=" + ",".join(median)],
                              device_backend="onnxruntime", artifacts=folder, latency_target_ms=0.001, window=1,
                              threshold_path=str(tmp_path / "path.json"), shadow_fraction=0.5,
                              consistency_epsilon=0.99, adapt_window=2, deadline_ms=EVENT_DEADLINE_MS)
    assert outcome.codes == [0, 0, 0]
    p = report["policies"]["distree"]
    assert all(mv["reason"] == "over budget" for mv in p["adaptive"]["moves"])
    assert p["settings_per_sample"][-1] == [2, 2]
    engine = {k: engine_predictions(run, "distree", "distree=" + ",".join(t)) for k, t in enumerate(path)}
    same = [(k, s[0]) for k, s in enumerate(p["settings_per_sample"]) if s[0] == s[1]]
    assert {index for _, index in same} == {0, 1, 2} and len(same) >= SAMPLES - 4
    assert all(p["predictions"][k] == engine[index][k] for k, index in same)
    assert p["adaptive"]["shadow"]["shadows"] > 0
