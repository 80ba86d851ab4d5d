"""`distree evaluate` end to end on a tiny run directory, and its errors for bad input."""
import json
from types import SimpleNamespace

import pytest
import torch

from distree.cli import main
from distree.errors import DistreeError
from distree.levers import COMPARED, LEVERS, LeverConfig, lever_config, lever_table, run_levers
from distree.inference.timing import TimingConfig
from distree.inference.diagnostics import auroc
from distree.evaluation import EvaluateConfig, evaluate_run
from distree.experiment import run_experiment
from distree.report import write_report
from distree.report.plots import pareto
from distree.risk import max_losses
from distree.run_dir import STUDENTS, build_students, load_surviving_sets, save_atomic, write_config
from distree.run_report import EvaluationReport, Goal, Machinery
from distree.training.presets import run_config

FAST = EvaluateConfig(gate_samples=64, curve_points=8, timing=TimingConfig(16, 8, 4, 1))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A synthetic-data run whose students are untrained: the report's plumbing, not its numbers."""
    path = tmp_path_factory.mktemp("run")
    config = run_config("smoke")
    write_config(path, config)
    torch.manual_seed(0)
    model = build_students(config)
    save_atomic({"config": config, "model": model.state_dict(), "epoch": 1}, path / STUDENTS)
    return path


def test_evaluate_writes_the_report_with_its_keys(run_dir):
    evaluation = evaluate_run(run_dir, FAST)
    write_report(evaluation, run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("dataset", "teacher_accuracy", "exit_accuracy", "policies", "elapsed_s"):
        assert key in report
    assert report["dataset"] == "synthetic" and len(report["exit_accuracy"]) == 7
    names = {e["policy"] for e in report["policies"]}
    assert names == {"distree", "similarity", "local-confidence", "learned-gate", "random", "last-exit",
                     "confidence", "entropy"}
    for e in report["policies"]:
        assert 0 <= e["accuracy"] <= 1 and e["flops_reduction"] <= 1 and len(e["thresholds"]) == 5
        assert torch.tensor(e["exit_histogram"]).sum(1).tolist() == [128, 128]  # the test split, per student
    timed = [e for e in report["policies"] if e["latency_ms_measured"] is not None]
    assert {e["policy"] for e in timed} >= {"last-exit", "distree"}
    assert all(f"{k}_saved_{m}" in e for e in timed for k in ("time", "flops", "stage_time")
               for m in ("streaming", "compacting"))
    for name in ("report.md", "accuracy_vs_flops.png", "accuracy_vs_latency.png", "exit_histograms.png",
                 "exit_accuracy.png", "threshold_sweep.png", "score_distributions.png", "surviving_sets.png"):
        assert (run_dir / name).stat().st_size > 0
    assert "| distree | calibrated |" in (run_dir / "report.md").read_text()
    shown = EvaluationReport.from_json(report)  # what report.md and the figures read: every row, by name
    assert [(e.policy, e.setting, e.accuracy) for e in shown.policies] == \
        [(e["policy"], e["setting"], e["accuracy"]) for e in report["policies"]]
    assert shown.calibrated("distree").flops_reduction == next(
        e["flops_reduction"] for e in report["policies"] if e["policy"] == "distree" and e["setting"] == "calibrated")
    assert all(e.saved["streaming"] is not None for e in shown.policies if e.latency_ms_measured is not None)
    # the aggregator of every surviving set, kept in the run, and the report's accuracy per set
    table = load_surviving_sets(run_dir, 2)
    assert set(table.sets) == {(0,), (1,)} and evaluation.surviving.sets[(0,)].scale == table.sets[(0,)].scale
    rows = {(r.policy, r.setting): r for r in shown.surviving}
    assert ("last-exit", "last exit") in rows and ("learned-gate", "calibrated") in rows
    assert not any(p in {r.policy for r in shown.surviving} for p in ("confidence", "entropy", "random"))
    last = rows[("last-exit", "last exit")]
    assert [s.members for s in last.sets] == [[0, 1], [0], [1]]
    assert last.sets[0].accuracy == last.sets[0].accuracy_zeroed == report["last_exit_accuracy"]
    assert [a.p for a in last.expected] == [0.99, 0.95, 0.9]
    assert "When devices are lost" in (run_dir / "report.md").read_text()
    for c, spec in zip(report["certified"], shown.certified):  # every risk certified anew per surviving set
        assert [d["members"] for d in c["surviving_sets"]] == [[0], [1]]
        for d in spec.surviving_sets:
            assert {e.policy for e in d.policies} == {"distree", "similarity", "local-confidence", "learned-gate"}
            assert set(d.resplits) == {e.policy for e in d.policies}
            for e in d.policies:
                assert e.calibration_samples == c["calibration_samples"]
                assert not e.certified or e.losses <= c["max_losses"]
    assert "certified anew for every surviving set" in (run_dir / "report.md").read_text()
    # what more labelled data would buy: the samples that certify each policy's next candidate at its loss rate
    spec = report["certified"][0]
    for e in spec["policies"]:
        if e["candidate"] + 1 < e["candidates"] and e["next_samples"] is not None:
            assert e["next_samples"] > e["calibration_samples"]  # the next candidate failed on the samples there are
            assert max_losses(e["next_samples"], spec["epsilon"], spec["delta"]) >= 0
    assert "val samples that would certify the next candidate" in (run_dir / "report.md").read_text()


def test_bad_input_gets_a_clear_error(run_dir, capsys):
    assert main(["evaluate", "--run", str(run_dir), "--threshold", "distree=1.1,1.2"]) == 2
    assert "5 values" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run_dir), "--thresholds", "1.1,1.2,1.2,1.3,1.3"]) == 2
    assert "no POLICY= before the values" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run_dir), "--dataset", "cifar10"]) == 2
    assert "is a synthetic run, not cifar10" in capsys.readouterr().err
    config = json.loads((run_dir / "config.json").read_text())
    config["students"]["num_students"] = 3
    other = run_dir / "other"
    other.mkdir()
    write_config(other, config)
    (other / STUDENTS).write_bytes((run_dir / STUDENTS).read_bytes())
    assert main(["evaluate", "--run", str(other)]) == 2
    assert "another run" in capsys.readouterr().err


def test_auroc_and_pareto():
    assert auroc(torch.tensor([0.1, 0.4, 0.5, 0.8]), torch.tensor([False, True, False, True])) == 0.75
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([True, False])) == 0.5
    assert auroc(torch.tensor([1.0]), torch.tensor([True])) is None
    assert pareto([(1.0, 0.9), (0.5, 0.8), (0.6, 0.7), (0.2, 0.85)]) == [(0.2, 0.85), (1.0, 0.9)]


def test_lever_configs_change_one_thing_and_tabulate():
    base = run_config("smoke")
    config = lever_config(base, LEVERS["no mixed-exit term"], epochs=1)
    assert config["students"]["loss"]["mixed_weight"] == 0.0 and config["students"]["optim"]["epochs"] == 1
    assert base["students"]["loss"]["mixed_weight"] == 1.0  # the base config is left alone
    policy = {"flops_reduction": 0.3, "accuracy_change": -0.004}
    row = {"lever": "x", "last_exit_accuracy": 0.9, "oracle_flops_reduction": 0.8, "distree_auroc": [0.5, None],
           **{p: policy for p in COMPARED},
           "certified": [{"risk": "accuracy", "epsilon": 0.005, "local-confidence": 0.25, "learned-gate": None}]}
    table = lever_table([row])
    assert "| x | 90.00% | 30.0% (-0.40) |" in table
    assert "certified accuracy <= 0.5%: local-confidence / learned-gate |" in table and "| 25.0% / none |" in table
    assert lever_config(base, LEVERS["no failout"], epochs=1)["students"]["loss"]["failout"] == 0.0
    with pytest.raises(DistreeError, match="unknown lever"):
        run_levers(".", "/nonexistent", LeverConfig(levers=["more coffee"]))


def test_machinery_summary_says_whether_the_target_is_met():
    from distree.report.markdown import machinery_summary

    cost = SimpleNamespace(machinery=Machinery(us_per_exit=30.0, bare_op_us=12.0, over_bare_op=2.5))
    assert "not met" in machinery_summary(cost) and "2.5x" in machinery_summary(cost)
    assert ": met" in machinery_summary(SimpleNamespace(machinery=Machinery(30.0, 12.0, over_bare_op=1.5)))
    assert machinery_summary(SimpleNamespace(machinery=None)) == ""


def test_goal_line_says_which_rows_it_counts():
    from distree.report.markdown import summary

    report = SimpleNamespace(goal=Goal(policy=None, flops_reduction=0.0, target=0.3, met=False),
                             oracle_flops_reduction=0.5, max_drop=0.005)
    text = summary(report)
    assert "not met" in text and "only each policy's `calibrated` row counts" in text
    assert "not the budget or certified rows" in text and "random" in text


def test_the_demo_reports_each_phases_seconds_and_the_machine(tmp_path):
    logged = []
    report = run_experiment(tmp_path / "run", "smoke", FAST, log=logged.append).report
    phases = report["phases_s"]
    assert list(phases) == ["teacher", "partition", "students", "evaluation"] and min(phases.values()) >= 0
    assert sum(phases.values()) <= report["elapsed_s"] and len(logged) == 4
    assert "cores" in report["machine"] and "torch" in report["machine"]
    head = (tmp_path / "run" / "report.md").read_text().splitlines()[2]
    assert f"the whole experiment took {report['elapsed_s']:.0f} s (teacher " in head and report["machine"] in head
