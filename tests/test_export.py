"""distree export: a tiny run's students as ONNX files and AOTInductor packages, checked against the engine.

The run is test_runtime's: untrained WRN-16-1 students on the synthetic set, with thresholds at
each exit's median score so that samples leave at several exits. Each format is exported once
per module (the AOTInductor compile is the slow part); the fused ops' ONNX translation is also
checked rule by rule against the reference on a one-op graph.
"""
import csv
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distree_kernels
from distree.cli import main
from distree.errors import DistreeError
from distree.export.conformance import check_export
from distree.artifacts.manifest import KIND, MANIFEST, clear_output, surviving_sets
from distree.export.run import export_run
from distree.models.surviving_sets import SurvivingSets, fit_surviving_sets
from distree.run_dir import load_student_model, save_surviving_sets
from distree.plan import make_plan, parse_thresholds
from exit_gate_cases import RULES, make_gate_args
from test_runtime import make_run, median_thresholds

SAMPLES = 32
MISSING = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
needs_onnx = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = make_run(tmp_path_factory.mktemp("export-run"), 2)
    return path, median_thresholds(path, "distree")


@pytest.fixture(scope="module")
def onnx_out(run, tmp_path_factory):
    """The run exported to ONNX through the CLI, with --check on SAMPLES samples."""
    if MISSING:
        pytest.skip(f"not installed: {', '.join(MISSING)}")
    path, thresholds = run
    out = tmp_path_factory.mktemp("onnx") / "export"
    code = main(["export", "--run", path, "--format", "onnx", "--out", str(out), "--threshold", thresholds,
                 "--check", "--samples", str(SAMPLES)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def pt2_out(run, tmp_path_factory):
    path, thresholds = run
    out, _ = export_run(path, "pt2", tmp_path_factory.mktemp("pt2") / "export", None,
                        parse_thresholds([thresholds]), progress=lambda line: None)
    return out


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_manifest(out, fmt: str, thresholds: str):
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == KIND and manifest["format"] == fmt and manifest["policy"] == "distree"
    assert manifest["setting"] == "given" and manifest["rule"] == "inverse_cos" and manifest["inclusive"] is False
    assert manifest["thresholds"] == pytest.approx([float(v) for v in thresholds.split("=")[1].split(",")])
    assert manifest["input"]["shape"] == [1, 3, 32, 32] and len(manifest["input"]["normalisation"]["mean"]) == 3
    prep = manifest["preprocessing"]
    assert (prep["resize"], prep["size"], prep["channels"]) == ("crop-resize", 32, 3) and prep["steps"]
    assert prep["mean"] == manifest["input"]["normalisation"]["mean"]
    assert manifest["class_names"] == [str(k) for k in range(10)]
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["aggregator"]["surviving_sets"] is None  # the run was never evaluated
    assert (manifest["thresholds_input"] is not None) == (fmt == "onnx")  # pt2 keeps its thresholds inside
    assert [e["file"] for e in manifest["students"]] == [f"student0.{fmt}", f"student1.{fmt}"]
    for entry in manifest["students"]:
        assert entry["sha256"] == sha256(out / entry["file"])
    return manifest


def test_the_manifest_carries_the_runs_surviving_sets(tmp_path):
    path = make_run(tmp_path / "run", 2)
    model = load_student_model(path)
    u = torch.randn(2, 7, 64, 10)
    save_surviving_sets(path, fit_surviving_sets(model, u, torch.randint(0, 10, (64,))))
    table = surviving_sets(path, 2)
    assert "scale" in table["formula"] and table["num_students"] == 2
    assert [s["members"] for s in table["sets"]] == [[0], [1]]
    assert SurvivingSets.from_json(table, 2).sets[(1,)].bias.shape == (10,)


def assert_conforms(out):
    result = check_export(out, SAMPLES)
    assert result.samples == SAMPLES and result.max_abs_evidence_error <= 1e-4
    assert max(sum(c > 0 for c in counts) for counts in result.exit_histogram) >= 2  # several exits taken
    if json.loads((out / MANIFEST).read_text())["thresholds_input"]:  # checked at a moved setting too
        assert max(sum(c > 0 for c in counts) for counts in result.moved_exit_histogram) >= 2
        assert result.moved_exit_histogram != result.exit_histogram  # the input moved the exits
    return result


# -- ONNX --------------------------------------------------------------------------------------------

@needs_onnx
def test_onnx_export_conforms_and_its_manifest_holds(run, onnx_out):
    manifest = check_manifest(onnx_out, "onnx", run[1])
    assert manifest["opset"] >= 18 and manifest["versions"]["onnxruntime"]
    assert_conforms(onnx_out)


@needs_onnx
def test_onnx_graph_has_if_nodes_and_only_standard_ops(onnx_out):
    import onnx

    for path in sorted(onnx_out.glob("*.onnx")):
        model = onnx.load(str(path))
        ops, domains = [], set()

        def visit(graph):
            for node in graph.node:
                ops.append(node.op_type)
                domains.add(node.domain)
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.GRAPH:
                        visit(attr.g)
        visit(model.graph)
        assert ops.count("If") >= 5  # one per stage after exit 2's decision
        assert domains <= {"", "ai.onnx"}, domains
        assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
        assert not model.functions  # nothing left to a custom function library


@needs_onnx
def test_check_names_the_student_and_sample_that_disagree(onnx_out, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(onnx_out, changed)
    manifest = json.loads((changed / MANIFEST).read_text())
    manifest["thresholds"] = ["inf"] * 5  # the engine now runs every sample to exit 7
    (changed / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DistreeError, match=r"student0.onnx \(student 0\), sample \d+: exit \d but the engine's"):
        check_export(changed, SAMPLES)
    with open(changed / "student1.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DistreeError, match="student1.onnx does not match its sha256"):
        check_export(changed, SAMPLES)


@needs_onnx
def test_onnx_student_runs_with_onnxruntime_and_numpy_only(run, onnx_out, tmp_path):
    """OnnxStudent and the manifest's preprocessing in a fresh interpreter: a PNG of a test image becomes
    the test tensor bit for bit, the student answers, and torch is never imported."""
    from PIL import Image

    from distree.run_dir import read_config, run_splits
    from distree.samples import load_samples

    pixels = run_splits(run[0], read_config(run[0])).test.images[0].permute(1, 2, 0).numpy()  # (32, 32, 3) uint8
    Image.fromarray(pixels).save(tmp_path / "first.png")
    np_path = tmp_path / "expected.npy"
    load_samples(run[0], "test", 1).x.numpy().tofile(np_path)  # (1, 3, 32, 32) float32
    script = ("import sys, numpy as np\n"
              "from distree.artifacts.onnx_student import OnnxStudent, load_preprocessing\n"
              f"x = load_preprocessing({str(onnx_out)!r})({str(tmp_path / 'first.png')!r})\n"
              f"assert np.array_equal(x.ravel(), np.fromfile({str(np_path)!r}, np.float32)), 'not the test tensor'\n"
              f"u, exit = OnnxStudent({str(onnx_out / 'student1.onnx')!r}).run(x)\n"
              "assert x.shape == (1, 3, 32, 32) and u.shape == (1, 10) and u.dtype == np.float32 and 0 <= exit <= 6\n"
              "assert 'torch' not in sys.modules\n"
              "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@needs_onnx
def test_stock_onnx_client_reproduces_the_engine_on_png_files(run, onnx_out, tmp_path):
    """examples/onnx_client.py (onnxruntime, numpy, Pillow; the manifest only) on the first test images
    saved as PNG under their label's folder answers every file as the engine does on the tensors."""
    from PIL import Image

    from distree.export.conformance import _policy
    from distree.inference.engine import InferenceEngine
    from distree.run_dir import read_config, run_splits
    from distree.samples import load_samples

    test = run_splits(run[0], read_config(run[0])).test
    for k in range(SAMPLES):
        (tmp_path / "images" / str(int(test.labels[k]))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[k].permute(1, 2, 0).numpy()).save(tmp_path / "images" / str(int(test.labels[k]))
                                                                      / f"{k:03d}.png")
    answers = tmp_path / "answers.csv"
    client = Path(__file__).resolve().parents[1] / "examples" / "onnx_client.py"
    done = subprocess.run([sys.executable, str(client), str(onnx_out), str(tmp_path / "images"), "--csv", str(answers)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((onnx_out / MANIFEST).read_text())
    engine = InferenceEngine(load_student_model(run[0]), _policy(manifest),
                             torch.tensor([float(t) for t in manifest["thresholds"]]))
    x = load_samples(run[0], "test", SAMPLES).x
    with torch.inference_mode():
        expected = engine.run(x, torch.arange(SAMPLES), mode="streaming").logits.argmax(-1)  # (S,)
    names = json.loads((onnx_out / MANIFEST).read_text())["class_names"]
    rows = list(csv.DictReader(open(answers)))
    got = {int(Path(r["file"]).stem): names.index(r["predicted"]) for r in rows}
    assert len(rows) == SAMPLES and got == {k: int(expected[k]) for k in range(SAMPLES)}
    right = sum(int(expected[k]) == int(test.labels[k]) for k in range(SAMPLES))
    assert f"accuracy {100 * right / SAMPLES:.2f}% on {SAMPLES} labelled" in done.stdout


def _gate_case(rule, probabilities, inclusive, K=6):
    """A one-op model: the exit gate with `rule` on (x, first, previous), the rest as constants, with the
    threshold amid the reference scores so that the case decides both ways; and the reference's outputs."""
    args = make_gate_args(4, 8, 3, 5, K, True, probabilities)
    x, weight, bias, first, previous, bias_share, gate_weight, gate_bias = args
    first[0], previous[1] = 0, 0  # a zero norm: its cosine reads 1
    score = distree_kernels.exit_gate_reference(*args, torch.tensor(0.0), rule, inclusive)[1]  # (4,)
    finite = score[score.isfinite()].sort().values
    threshold = finite[len(finite) // 2 - 1:len(finite) // 2 + 1].mean()  # between two scores, not at one

    class Gate(torch.nn.Module):
        def forward(self, x, first, previous):
            return distree_kernels.exit_gate(x, weight, bias, first, previous, bias_share, gate_weight, gate_bias,
                                             threshold, rule, inclusive, backend="cpp")
    return Gate().eval(), (x, first, previous), distree_kernels.exit_gate_reference(*args, threshold, rule, inclusive)


@needs_onnx
@pytest.mark.parametrize("rule, probabilities, inclusive", [(r, True, r != "inverse_cos") for r in RULES]
                         + [("gate", False, False), ("max_prob", True, False)])
def test_each_rule_translates_to_the_reference(rule, probabilities, inclusive, tmp_path):
    from distree.export.onnx_ops import translation_table
    from distree.export.quiet import quiet
    import onnxruntime

    module, inputs, want = _gate_case(rule, probabilities, inclusive)
    with torch.no_grad(), quiet():
        program = torch.onnx.export(module, inputs, dynamo=True, opset_version=18,
                                    custom_translation_table=translation_table(), verbose=False)
        program.save(str(tmp_path / "gate.onnx"), external_data=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "gate.onnx"))
    feat, score, stop = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})
    assert torch.allclose(torch.from_numpy(feat), want[0], atol=1e-6)
    assert torch.allclose(torch.from_numpy(score), want[1], atol=1e-5, equal_nan=True)
    assert torch.equal(torch.from_numpy(stop), want[2])
    assert 0 < int(want[2].sum()) < 4  # the case decides both ways


def unread_initializers(graph) -> list[str]:
    """The initializers of an onnx graph, and of every subgraph inside it, that no node reads and no graph
    returns (a subgraph's nodes may read their outer graphs' initializers)."""
    def subgraphs(g):
        return [sub for node in g.node for attr in node.attribute
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]

    def reads(g) -> set:
        return {name for node in g.node for name in node.input}.union(*(reads(sub) for sub in subgraphs(g)))

    read, returned = reads(graph), {o.name for o in graph.output}
    own = [i.name for i in graph.initializer if i.name not in read and i.name not in returned]
    return own + [name for sub in subgraphs(graph) for name in unread_initializers(sub)]


@needs_onnx
def test_onnx_files_hold_no_unused_initializers_and_load_without_warnings(run, tmp_path, capfd):
    """local-confidence's gates leave constants that no node reads (stock onnxruntime warns once per
    constant as it drops them); the exporter drops them first, so nothing is said at the default log level."""
    import onnx
    import onnxruntime

    path, _ = run
    out = tmp_path / "export"
    assert main(["export", "--run", path, "--format", "onnx", "--out", str(out), "--policy", "local-confidence",
                 "--threshold", median_thresholds(path, "local-confidence")]) == 0
    capfd.readouterr()
    for file in sorted(out.glob("*.onnx")):
        assert unread_initializers(onnx.load(file).graph) == [], file
        onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    assert capfd.readouterr().err == ""


# -- AOTInductor ---------------------------------------------------------------------------------------

def test_pt2_export_conforms_and_its_manifest_holds(run, pt2_out):
    manifest = check_manifest(pt2_out, "pt2", run[1])
    assert manifest["opset"] is None
    assert_conforms(pt2_out)


def test_pt2_loads_with_the_kernels_only(pt2_out):
    """A fresh interpreter that imports distree_kernels, never distree, runs a package."""
    script = ("import sys, torch, distree_kernels\n"
              f"walk = torch._inductor.aoti_load_package({str(pt2_out / 'student0.pt2')!r})\n"
              "u, exit = walk(torch.randn(1, 3, 32, 32))\n"
              "assert u.shape == (1, 10) and exit.dtype == torch.int64 and 0 <= int(exit) <= 6\n"
              "assert not [m for m in sys.modules if m == 'distree' or m.startswith('distree.')]\n"
              "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# -- bad input --------------------------------------------------------------------------------------------

def export_error(capsys, *argv) -> str:
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_bad_input_is_one_line_and_exit_code_2(run, tmp_path, capsys):
    path, thresholds = run
    out = ["--out", str(tmp_path / "out")]
    assert "no calibrated thresholds for 'distree'" in export_error(capsys, "--run", path, "--format", "onnx", *out)
    assert "unknown export format 'tflite'" in export_error(capsys, "--run", path, "--format", "tflite",
                                                            "--threshold", thresholds, *out)
    assert "needs the aggregator at every stage" in export_error(capsys, "--run", path, "--format", "onnx",
                                                                 "--policy", "confidence", *out)
    assert "not decided by the exit gate" in export_error(capsys, "--run", path, "--format", "onnx",
                                                          "--policy", "random", "--threshold", "random=0.5", *out)
    assert "unknown policy 'nope'" in export_error(capsys, "--run", path, "--format", "onnx", "--policy", "nope", *out)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    assert "is not a distree export" in export_error(capsys, "--run", path, "--format", "onnx", "--out", str(user),
                                                     "--threshold", thresholds)
    assert (user / "notes.txt").read_text() == "keep me" and sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "out").exists()  # nothing was written for any bad input


def test_an_earlier_export_is_replaced_and_nothing_else(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"kind": KIND, "students": [{"file": "student0.onnx"}]}))
    (out / "student0.onnx").write_bytes(b"old")
    (out / "notes.txt").write_text("keep me")
    clear_output(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_thresholds_come_from_the_given_then_the_named_setting(tmp_path):
    """export and deploy make one plan: --threshold, else the --setting named, else calibrated; a
    report.json from before settings.json existed reads the same."""
    certified = [{"policy": "distree", "certified": True, "thresholds": [1.2, 1.2, 1.2, 1.2, "inf"]},
                 {"policy": "similarity", "certified": False, "thresholds": None}]
    report = {"policies": [{"policy": "distree", "setting": "calibrated", "thresholds": [1.1] * 5}],
              "certified": [{"risk": "accuracy", "epsilon": 0.005, "delta": 0.1, "policies": certified}]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert make_plan(["distree"], {}, tmp_path)[0].thresholds.tolist() == pytest.approx([1.1] * 5)
    spec, = make_plan(["distree"], {}, tmp_path, "certified-accuracy")
    assert spec.thresholds.tolist() == pytest.approx([1.2] * 4 + [float("inf")])
    assert spec.source == "certified-accuracy"
    spec, = make_plan(["distree"], parse_thresholds(["distree=2"]), tmp_path, "certified-accuracy")
    assert spec.thresholds.tolist() == [2.0] * 5 and spec.source == "given"
    with pytest.raises(DistreeError, match="setting 'certified-accuracy' holds no thresholds for 'similarity'"):
        make_plan(["similarity"], {}, tmp_path, "certified-accuracy")
    with pytest.raises(DistreeError, match="no setting 'best'; it holds: calibrated, certified-accuracy"):
        make_plan(["distree"], {}, tmp_path, "best")
    with pytest.raises(DistreeError, match="--threshold given for confidence"):
        make_plan(["distree"], parse_thresholds(["confidence=0.5"]), tmp_path)
