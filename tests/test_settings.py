"""Settings that stay put: evaluating again changes nothing deploy or export serve unless a
setting is picked by name; thresholds typed on the command line are refused when they cannot be meant."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from distree.cli import main
from distree.errors import DistreeError
from distree.export.walks import export_plan
from distree.plan import DEFAULT_POLICIES, make_plan, parse_thresholds
from distree.run_dir import CALIBRATED, GATE
from distree.run_settings import SETTINGS, read_settings
from distree.runtime.plan import with_loss_settings
from test_runtime import make_run

FAST = ["--gate-samples", "64", "--resplits", "0", "--timing-samples", "16", "--streaming-samples", "8"]
SERVED = list(DEFAULT_POLICIES) + ["learned-gate"]


def served(run, setting=None) -> dict[str, list]:
    return {s.name: s.thresholds.tolist() for s in make_plan(SERVED, {}, run, setting)}


def calibrated_in(report_path) -> dict[str, list]:
    report = json.loads(report_path.read_text())
    return {e["policy"]: [float(v) for v in e["thresholds"]] for e in report["policies"] if e["setting"] == CALIBRATED}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A run evaluated once for the consistency risk only, then again with other options."""
    run = make_run(tmp_path_factory.mktemp("settings"), 2)
    assert main(["evaluate", "--run", run, *FAST, "--risk", "consistency", "--epsilon", "0.5"]) == 0
    first = {"plan": served(run), "export": export_plan(run).thresholds.tolist(),
             "gate": (Path(run) / GATE).read_bytes(), "report": calibrated_in(Path(run) / "report.json")}
    assert main(["evaluate", "--run", run, *FAST, "--max-drop", "100", "--gate-samples", "32",
                 "--risk", "accuracy", "--epsilon", "0.5"]) == 0
    return run, first


def test_a_second_evaluation_changes_nothing_served(evaluated):
    run, first = evaluated
    second = calibrated_in(Path(run) / "report.json")
    assert second != first["report"]  # the second evaluation chose other thresholds ...
    assert served(run) == first["plan"]  # ... and deploy serves what it served
    assert export_plan(run).thresholds.tolist() == first["export"]
    settings = read_settings(run)
    assert list(settings.settings) == ["calibrated", "certified-consistency", "certified-accuracy"]  # added, not replaced
    assert settings.get("certified-consistency").grids  # the adaptive runtime's grid stays too
    assert settings.get("certified-accuracy").options["risk"] == "accuracy"
    assert (Path(run) / GATE).read_bytes() == first["gate"]  # the gate the settings use


def test_each_surviving_set_gets_its_certified_setting(evaluated):
    run, _ = evaluated
    settings = read_settings(run)
    report = json.loads((Path(run) / "report.json").read_text())
    accuracy = settings.get("certified-accuracy")
    spec = next(c for c in report["certified"] if c["risk"] == "accuracy")
    want = {(tuple(d["members"]), e["policy"]): [float(v) for v in e["thresholds"]]
            for d in spec["surviving_sets"] for e in d["policies"] if e["certified"]}
    assert want  # epsilon 0.5 certifies something
    assert {(m, p): t.tolist() for p, sets in accuracy.by_set.items() for m, t in sets.items()} == want
    assert settings.set_source("calibrated") is accuracy  # a calibrated deploy moves to the accuracy certificate's
    assert settings.set_source("certified-consistency").name == "certified-consistency"
    plan = with_loss_settings(make_plan(SERVED, {}, run, None), run, None)
    for spec in plan:
        if spec.policy.local and spec.name in accuracy.by_set:
            assert list(spec.on_loss) == sorted(accuracy.by_set[spec.name], key=lambda m: (len(m), m))
            for members in spec.on_loss:
                assert torch.equal(spec.settings()[spec.loss_index(members)], spec.on_loss[members])


def test_report_lists_every_setting_and_what_was_kept(evaluated):
    run, first = evaluated
    md = (Path(run) / "report.md").read_text()
    assert "## Settings the run serves" in md
    for name in ("`calibrated`", "`certified-consistency`", "`certified-accuracy`"):
        assert name in md
    row = next(line for line in md.splitlines() if line.startswith("| `calibrated` |") and "| distree |" in line)
    assert ", ".join(f"{v:.4g}" if abs(v) != float("inf") else ("inf" if v > 0 else "-inf")
                     for v in first["plan"]["distree"]) in row
    assert "Kept as stored, not replaced by this evaluation's: calibrated" in md


def test_a_named_evaluation_adds_its_settings_beside(evaluated, capsys):
    run, first = evaluated
    assert main(["evaluate", "--run", run, *FAST, "--max-drop", "100", "--risk", "consistency", "--epsilon", "0.5",
                 "--name", "loose"]) == 0
    folder = Path(run) / "evaluations" / "loose"
    assert (folder / "report.md").exists() and (folder / GATE).exists()
    assert served(run) == first["plan"]
    loose = served(run, "loose:calibrated")
    named = calibrated_in(folder / "report.json")
    assert all(loose[p] == pytest.approx(named[p]) for p in named if p in loose)
    assert "loose:certified-consistency" in read_settings(run).settings
    capsys.readouterr()
    assert main(["evaluate", "--run", run, *FAST, "--name", "loose"]) == 2
    assert "holds an evaluation named 'loose'" in capsys.readouterr().err
    with pytest.raises(DistreeError, match="no setting 'tight:calibrated'"):
        make_plan(["distree"], {}, run, "tight:calibrated")


def test_a_run_evaluated_before_settings_json_keeps_serving_its_report(evaluated, tmp_path):
    """An old run: report.json and no settings.json. It serves from the report; a new evaluation
    keeps those settings rather than replacing them."""
    run, _ = evaluated
    old = tmp_path / "old"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns(SETTINGS, "evaluations"))
    before = served(old)
    assert before == {p: calibrated_in(old / "report.json").get(p, [float("inf")] * 5) for p in SERVED}
    assert main(["evaluate", "--run", str(old), *FAST, "--max-drop", "0.5", "--risk", "consistency"]) == 0
    assert served(old) == before


def test_students_retrained_start_the_settings_afresh(evaluated, tmp_path):
    run, _ = evaluated
    other = tmp_path / "retrained"
    shutil.copytree(run, other)
    state = torch.load(other / "students.pt", weights_only=True)
    state["model"]["bias"] = state["model"]["bias"] + 1
    torch.save(state, other / "students.pt")
    assert main(["evaluate", "--run", str(other), *FAST, "--risk", "accuracy", "--epsilon", "0.5"]) == 0
    assert set(read_settings(other).settings) == {"calibrated", "certified-accuracy"}
    assert served(other) == {p: calibrated_in(other / "report.json").get(p, [float("inf")] * 5) for p in SERVED}


@pytest.mark.parametrize("typed", ["distree=nan", "distree=1,1,nan,1,1", "distree=1e39", "distree=-1e40,1,1,1,1"])
def test_thresholds_that_cannot_be_meant_are_refused(typed, evaluated, capsys, tmp_path):
    run, _ = evaluated
    for command in (["deploy", "--run", run, "--policies", "distree", "--threshold", typed],
                    ["export", "--run", run, "--format", "onnx", "--out", str(tmp_path / "x"), "--threshold", typed],
                    ["evaluate", "--run", run, "--threshold", typed]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: bad --threshold") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_inf_as_written_is_every_rule_s_never_and_always():
    t = parse_thresholds(["distree=inf,-inf,+inf,1.5,-Infinity"])["distree"]
    assert t.tolist() == [float("inf"), -float("inf"), float("inf"), 1.5, -float("inf")]
    with pytest.raises(DistreeError, match="unknown policy 'distre'"):
        parse_thresholds(["distre=1"])
    with pytest.raises(DistreeError, match="given twice"):
        parse_thresholds(["distree=1", "distree=2"])
