"""Threshold calibration: candidate order, the greedy path, goals (a) and (b), the shared sweep."""
import pytest
import torch

from distree.calibration import (PAPER_SWEEP, CalibrationConfig, best_within, candidates, greedy_path,
                                 least_flops, shared_sweep)
from distree.errors import DistreeError
from distree.inference.outcome import PolicyEvaluator
from distree.policies import make_policy
from inference_cases import synthetic_evidence, synthetic_flops

VAL, TEST = synthetic_evidence(b=1500, seed=1), synthetic_evidence(b=1500, seed=2)
FLOPS = synthetic_flops()
CONFIG = CalibrationConfig(quantiles=12)


def evaluator(name, ev=VAL):
    return PolicyEvaluator(make_policy(name), ev, FLOPS)


@pytest.mark.parametrize("name", ["distree", "entropy", "random"])
def test_candidates_run_from_stopping_nobody_to_stopping_everybody(name):
    e = evaluator(name)
    for j, grid in enumerate(candidates(e.policy, e.scores, 12)):
        assert grid[0] == e.policy.never and grid[-1] == e.policy.always
        stopped = [int(e.policy.passes(e.scores[:, j], t).sum()) for t in grid]
        assert stopped == sorted(stopped) and stopped[0] == 0


@pytest.mark.parametrize("name", ["distree", "local-confidence", "confidence"])
def test_greedy_path_goes_from_last_exit_to_exit_2_ever_cheaper(name):
    e = evaluator(name)
    path = greedy_path(e, CONFIG)
    last = e(make_policy("last-exit").default_thresholds())
    assert path[0].accuracy == last.accuracy
    assert (path[0].histogram[:, -1] == VAL.u.shape[2]).all()
    assert (path[-1].histogram[:, 1] == VAL.u.shape[2]).all()
    flops = [o.flops for o in path]
    assert all(a >= b for a, b in zip(flops, flops[1:]))


def test_goal_a_is_the_cheapest_setting_within_the_allowed_drop():
    path = greedy_path(evaluator("confidence"), CONFIG)
    chosen = least_flops(path, path[0].accuracy, 0.01)
    assert chosen.accuracy >= path[0].accuracy - 0.01
    assert all(o.flops >= chosen.flops for o in path if o.accuracy >= path[0].accuracy - 0.01)
    assert chosen.flops_reduction > 0.05  # aggregated confidence finds some of the savings the synthetic set holds


def test_goal_b_is_the_most_accurate_setting_within_a_budget():
    path = greedy_path(evaluator("distree"), CONFIG)
    budget = 0.6 * FLOPS.last_exit()
    chosen = best_within(path, flops=budget)
    assert chosen.flops <= budget
    assert all(o.accuracy <= chosen.accuracy for o in path if o.flops <= budget)
    assert best_within(path, latency_s=0.05).latency_s <= 0.05
    with pytest.raises(DistreeError, match="no setting meets the budget"):
        best_within(path, flops=0.01 * FLOPS.last_exit())


def test_shared_sweep_uses_one_threshold_for_every_exit():
    sweep = shared_sweep(evaluator("distree"))
    assert len(sweep) == len(PAPER_SWEEP)
    assert all((o.thresholds == t).all() for o, t in zip(sweep, PAPER_SWEEP))
    flops = [o.flops for o in sweep]
    assert flops == sorted(flops)  # a higher T stops fewer samples


def test_thresholds_of_the_wrong_length_are_refused():
    with pytest.raises(DistreeError, match="5 values"):
        evaluator("distree")(torch.ones(4))
