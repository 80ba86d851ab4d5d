"""Threshold calibration: candidate order, the calibration front, goals (a) and (b), the shared sweep."""
from dataclasses import replace

import pytest
import torch

from distree.calibration import (PAPER_SWEEP, CalibrationConfig, best_within, calibration_front, candidates,
                                 least_flops, pareto_front)
from distree.errors import DistreeError
from distree.inference import evidence
from distree.inference.outcome import PolicyEvaluator
from distree.policies import make_policy
from inference_cases import synthetic_evidence, synthetic_flops

VAL, TEST = synthetic_evidence(b=1500, seed=1), synthetic_evidence(b=1500, seed=2)
FLOPS = synthetic_flops()
CONFIG = CalibrationConfig(quantiles=12, lambdas=8)


def evaluator(name, ev=VAL):
    return PolicyEvaluator(make_policy(name), ev, FLOPS)


def only_at(policy, j, t):
    """Thresholds (5,) that stop nobody except at exit j + 2, where the threshold is t."""
    out = policy.default_thresholds().clone()
    out[j] = t
    return out


@pytest.mark.parametrize("name", ["distree", "entropy", "random"])
def test_candidates_run_from_stopping_nobody_to_stopping_everybody(name):
    e = evaluator(name)
    for j, grid in enumerate(candidates(e.policy, e.scores, 12)):
        assert grid[0] == e.policy.never and grid[-1] == e.policy.always
        stopped = [int((e.exits(only_at(e.policy, j, t)) == j + 1).sum()) for t in grid]
        assert stopped == sorted(stopped) and stopped[0] == 0


@pytest.mark.parametrize("name", ["distree", "local-confidence", "confidence"])
def test_front_trades_accuracy_for_flops_from_last_exit_down(name):
    e = evaluator(name)
    front = calibration_front(e, CONFIG)
    flops, accuracy = [o.flops for o in front], [o.accuracy for o in front]
    assert flops == sorted(flops) and accuracy == sorted(accuracy)  # cheaper is never more accurate
    assert front[-1].accuracy >= e(e.policy.never).accuracy  # last-exit's accuracy is on or under the front
    assert front[0].flops < 0.5 * FLOPS.last_exit()  # and the sweep reaches far cheaper settings


def test_pareto_front_keeps_the_undominated():
    e = evaluator("distree")
    outcomes = [e(t) for t in (1.0, 1.5, 3.0, float("inf"))]
    front = pareto_front(outcomes + outcomes[:1])
    assert all(not (o.flops <= f.flops and o.accuracy > f.accuracy) for f in front for o in outcomes)


def test_goal_a_is_the_cheapest_setting_within_the_allowed_drop():
    e = evaluator("confidence")
    front, last = calibration_front(e, CONFIG), e(e.policy.never)
    chosen = least_flops(front, last.accuracy, 0.01)
    assert chosen.accuracy >= last.accuracy - 0.01
    assert all(o.flops >= chosen.flops for o in front if o.accuracy >= last.accuracy - 0.01)
    assert chosen.flops_reduction > 0.2  # aggregated confidence finds the savings the synthetic set holds


def test_goal_b_is_the_most_accurate_setting_within_a_budget():
    path = calibration_front(evaluator("distree"), CONFIG)
    budget = 0.6 * FLOPS.last_exit()
    chosen = best_within(path, flops=budget)
    assert chosen.flops <= budget
    assert all(o.accuracy <= chosen.accuracy for o in path if o.flops <= budget)
    assert best_within(path, latency_s=0.05).latency_s <= 0.05
    with pytest.raises(DistreeError, match="no setting meets the budget"):
        best_within(path, flops=0.01 * FLOPS.last_exit())


def test_the_papers_shared_threshold_stops_fewer_samples_as_it_rises():
    e = evaluator("distree")
    flops = [e(t).flops for t in PAPER_SWEEP]
    assert flops == sorted(flops)


def test_thresholds_of_the_wrong_length_are_refused():
    with pytest.raises(DistreeError, match="5 values"):
        evaluator("distree")(torch.ones(4))


@pytest.mark.parametrize("students", [1, 2, 3])
def test_answers_from_the_table_are_the_aggregated_answers(students, monkeypatch):
    """Evidence.answers looks up every combination's answer where the table fits, and computes it where
    not: both are logits_at(exits).argmax(-1), for one, two and three students."""
    ev = synthetic_evidence(b=300, seed=3)
    ev = replace(ev, u=ev.u[[i % 2 for i in range(students)]])  # (students, 7, B, K)
    exits = torch.randint(0, 7, (students, 300), generator=torch.Generator().manual_seed(0))  # (N, B)
    expected = ev.logits_at(exits).argmax(-1)
    assert ev._answer_table is not None and torch.equal(ev.answers(exits), expected)
    monkeypatch.setattr(evidence, "ANSWER_TABLE_LIMIT", 7 ** students * 300 - 1)
    untabled = replace(ev)
    assert untabled._answer_table is None and torch.equal(untabled.answers(exits), expected)
