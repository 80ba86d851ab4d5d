"""Refuse what cannot be meant: negative counts and budgets outside (0, 1] are one line naming the
option and exit code 2, before anything runs."""
import pytest

from distree.cli import main
from test_runtime import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    return make_run(tmp_path_factory.mktemp("run"), 2)


def error_of(capsys, *args) -> str:
    """The one stderr line of a command that must fail with exit code 2."""
    assert main([str(a) for a in args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("option", ["--gate-samples", "--timing-samples", "--streaming-samples", "--resplits"])
def test_evaluate_refuses_negative_counts(run, capsys, option):
    assert f"{option} must be 0 or more, got -1" in error_of(capsys, "evaluate", "--run", run, option, -1)


@pytest.mark.parametrize("budget", ["0", "1.5", "-0.2", "nan", "inf"])
def test_evaluate_refuses_a_flops_budget_outside_0_1(run, capsys, budget):
    assert "--flops-budget must be a fraction in (0, 1]" in error_of(capsys, "evaluate", "--run", run,
                                                                     "--flops-budget", budget)


def test_evaluate_refuses_a_latency_budget_that_is_not_positive(run, capsys):
    assert "--latency-budget-ms must be > 0" in error_of(capsys, "evaluate", "--run", run, "--latency-budget-ms", 0)


@pytest.mark.parametrize("option", ["--samples", "--reference-samples", "--warmup"])
def test_deploy_refuses_negative_counts(run, capsys, option):
    assert f"{option} must be 0 or more, got -3" in error_of(capsys, "deploy", "--run", run, "--policies",
                                                              "last-exit", option, -3)


def test_export_overhead_and_levers_refuse_counts_that_cannot_be_meant(run, capsys, tmp_path):
    assert "--samples must be 0 or more" in error_of(capsys, "export", "--run", run, "--format", "onnx", "--out",
                                                     tmp_path / "x", "--check", "--samples", -5)
    assert "--batch-size and --repeats must be 1 or more" in error_of(capsys, "overhead", "--repeats", 0)
    assert "--epochs must be 1 or more" in error_of(capsys, "levers", "--run", run, "--epochs", -1)
