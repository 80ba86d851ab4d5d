"""Risk-controlled calibration: p-values, fixed-sequence testing, both risks, the guarantee over resplits,
the report's certified section and the CLI's errors."""
import math
from dataclasses import replace

import pytest
import torch
from scipy.stats import hypergeom

from distree.calibration import CalibrationConfig
from distree.cli import main
from distree.errors import DistreeError
from distree.evaluation import evaluate_run
from distree.inference.outcome import PolicyEvaluator
from distree.policies import make_policy
from distree.report import write_report
from distree.report.markdown import certified_text
from distree.risk import (PathLosses, RiskSpec, binomial_cdf, candidate_path, certify, fixed_sequence, max_losses,
                          p_value, path_losses, resplit_check, samples_needed, upper_bound)
from distree.run_dir import write_config
from distree.run_report import Certificate
from distree.training.presets import run_config
from inference_cases import synthetic_evidence, synthetic_flops
from test_report import FAST, run_dir  # noqa: F401 (the tiny run directory fixture)

FLOPS = synthetic_flops()
CONFIG = CalibrationConfig(quantiles=12, lambdas=8)


def test_p_values_match_hand_computed_binomial_tails():
    assert p_value(0, 10, 0.1) == pytest.approx(0.9 ** 10, rel=1e-9)  # 0.34868
    assert p_value(1, 10, 0.1) == pytest.approx(0.9 ** 10 + 10 * 0.1 * 0.9 ** 9, rel=1e-9)  # 0.73610
    assert p_value(2, 5, 0.5) == pytest.approx((1 + 5 + 10) / 32, rel=1e-9)
    assert p_value(5, 5, 0.3) == pytest.approx(1.0)
    direct = sum(math.comb(5000, i) * 0.005 ** i * 0.995 ** (5000 - i) for i in range(19))
    assert p_value(18, 5000, 0.005) == pytest.approx(direct, rel=1e-9)
    assert binomial_cdf(5000, 0.005).diff().min() >= 0  # a CDF


def test_the_issues_numbers_for_5000_samples():
    assert max_losses(5000, 0.005, 0.1) == 18  # at most 18 harmed of 5,000 certify 0.5% at delta 0.1
    assert p_value(18, 5000, 0.005) <= 0.1 < p_value(19, 5000, 0.005)
    assert upper_bound(0, 5000, 0.1) == pytest.approx(1 - 0.1 ** (1 / 5000), rel=1e-6)  # no loss at all: 0.046%
    bound = upper_bound(18, 5000, 0.1)
    assert p_value(18, 5000, bound) == pytest.approx(0.1, rel=1e-12) and p_value(18, 5000, bound * 0.999) > 0.1
    n = samples_needed(0.005, 0.1, 0.0036)
    assert max_losses(n, 0.005, 0.1) >= math.floor(0.0036 * n) and 3000 < n < 7000


# (losses, n, epsilon, p-value, Clopper-Pearson bound at delta 0.1) as the risk module computed them
# before it used scipy.stats: a log-space sum of the binomial pmf, and a 50-step bisection.
BEFORE_SCIPY = [(18, 5000, 0.005, 0.09148785138912414, 0.004947911559264995),
                (40, 5000, 0.01, 0.08499265788618633, 0.009868745817763092),
                (12, 64, 0.3, 0.02989647686971677, 0.2651133689088363),
                (13, 1000, 0.02, 0.06422611489957175, 0.018901434399910322),
                (0, 200, 0.1, 7.055079108655332e-10, 0.011446905343061253)]


@pytest.mark.parametrize("losses, n, epsilon, p, bound", BEFORE_SCIPY)
def test_scipy_s_tails_and_bounds_are_today_s_values(losses, n, epsilon, p, bound):
    assert p_value(losses, n, epsilon) == pytest.approx(p, rel=1e-10)
    assert binomial_cdf(n, epsilon)[losses].item() == pytest.approx(p, rel=1e-10)
    assert upper_bound(losses, n, 0.1) == pytest.approx(bound, rel=1e-12)
    assert p_value(losses, n, upper_bound(losses, n, 0.1)) == pytest.approx(0.1, rel=1e-9)


def test_the_readme_s_table_of_losses_an_epsilon_allows():
    """README's "How many validation samples an epsilon costs" (delta 0.1), unchanged."""
    table = {1000: [1, 5, 13], 2000: [5, 13, 31], 5000: [18, 40, 86], 10000: [40, 86, 181], 20000: [86, 181, 374]}
    for n, losses in table.items():
        assert [max_losses(n, e, 0.1) for e in (0.005, 0.01, 0.02)] == losses


def test_fixed_sequence_stops_at_the_first_p_value_above_delta():
    p = torch.tensor([0.001, 0.05, 0.2, 0.01])
    assert fixed_sequence(p, 0.1) == 1  # the last candidate would pass alone, but the walk stopped before it
    assert fixed_sequence(p, 0.3) == 3
    assert fixed_sequence(torch.tensor([0.5, 0.01]), 0.1) == -1
    assert fixed_sequence(torch.stack([p, p.flip(0)]), 0.1).tolist() == [1, 0]


def test_certify_a_constructed_path():
    """1,000 samples, losses per candidate 0, 2, 5, 30, 3 at epsilon 1%: P(Binom(1000, 0.01) <= 5) = 0.066
    passes delta 0.1, 30 does not, so the third candidate is certified though the fifth loses less."""
    k = torch.tensor([0, 2, 5, 30, 3])
    loss = torch.arange(1000).unsqueeze(0) < k.unsqueeze(1)  # (5, 1000)
    path = torch.arange(5.0).unsqueeze(1).expand(5, 5)
    cert = certify(path, PathLosses(loss, torch.zeros(5, 1000, dtype=torch.float64)), RiskSpec("accuracy", 0.01, 0.1))
    assert cert.index == 2 and cert.losses == 5 and cert.thresholds.tolist() == [2.0] * 5
    assert cert.p_value == pytest.approx(sum(math.comb(1000, i) * 0.01 ** i * 0.99 ** (1000 - i) for i in range(6)))
    assert cert.next_epsilon == pytest.approx(upper_bound(30, 1000, 0.1))
    assert cert.next_samples is None  # the next candidate loses 3% > epsilon: no number of samples certifies it
    none = certify(path, PathLosses(loss, loss.double()), RiskSpec("accuracy", 0.001, 0.1))  # needs 2,302 samples
    assert none.index == -1 and none.thresholds is None and none.next_epsilon == pytest.approx(1 - 0.1 ** 0.001)
    # the first candidate loses nothing: 0.999^n <= 0.1 from n = 2,302 on (within the search's 1%)
    assert 2302 <= none.next_samples <= 2302 * 1.01 and max_losses(none.next_samples, 0.001, 0.1) == 0


def evaluator(name, ev):
    return PolicyEvaluator(make_policy(name), ev, FLOPS)


def test_the_risks_per_sample_and_the_label_free_one_without_labels():
    ev = synthetic_evidence(b=800, seed=3)
    e = evaluator("local-confidence", ev)
    path = torch.stack([torch.full((5,), q) for q in (float("inf"), 0.6, 0.3, float("-inf"))])  # (4, 5)
    harm, change = path_losses(e, path, "accuracy"), path_losses(e, path, "consistency")
    assert not harm.loss[0].any() and not change.loss[0].any()  # stopping nobody changes nothing
    assert (harm.loss <= change.loss).all()  # a harm is a change
    last = ev.aggregate(ev.u[:, -1]).argmax(-1)
    answer = ev.logits_at(e.exits(path[2])).argmax(-1)
    assert change.loss[2].equal(answer != last)
    assert harm.loss[2].equal((answer != ev.labels) & (last == ev.labels))
    drop = (last == ev.labels).double().mean() - (answer == ev.labels).double().mean()
    assert harm.loss[2].double().mean() >= drop  # the harm rate bounds the accuracy drop
    assert harm.flops[0].mean() > harm.flops[-1].mean()
    unlabelled = evaluator("local-confidence", replace(ev, labels=None))
    assert path_losses(unlabelled, path, "consistency").loss.equal(change.loss)
    with pytest.raises(DistreeError, match="needs labels"):
        path_losses(unlabelled, path, "accuracy")


def test_the_path_runs_from_conservative_to_cheap_and_needs_no_labels():
    ev = synthetic_evidence(b=1000, seed=4)
    path = candidate_path(evaluator("confidence", replace(ev, labels=None)), CONFIG, 20)  # (C, 5)
    on = path_losses(evaluator("confidence", synthetic_evidence(b=1000, seed=5)), path, "consistency")
    assert 2 < len(path) <= 20 and on.flops.mean(1)[0] > on.flops.mean(1)[-1]
    assert on.loss[0].double().mean() < on.loss[-1].double().mean()


def test_the_order_never_sees_the_certification_samples():
    """evaluate's candidate paths depend on the ordering (training) evidence alone: validation evidence
    with other samples, other answers and no labels gives the same paths, and the certificate alone
    changes with it."""
    from distree.evaluation import EvaluateConfig, candidate_paths

    config = EvaluateConfig(risk_candidates=16)
    train = synthetic_evidence(b=1000, seed=4)
    policies = ("distree", "local-confidence", "similarity", "confidence")
    paths = [candidate_paths(train, {n: evaluator(n, val) for n in ["last-exit", *policies]}, config)
             for val in (synthetic_evidence(b=600, seed=5), replace(synthetic_evidence(b=300, seed=9), labels=None))]
    assert set(paths[0]) == set(policies)
    assert all(torch.equal(paths[0][n], paths[1][n]) for n in policies)
    other = candidate_paths(synthetic_evidence(b=1000, seed=8), {n: evaluator(n, train) for n in policies}, config)
    assert not all(torch.equal(paths[0][n], other[n]) for n in policies)  # the ordering evidence does set them


@pytest.mark.parametrize("risk, epsilon", [("accuracy", 0.02), ("consistency", 0.05)])
def test_the_guarantee_holds_over_resplits(risk, epsilon):
    """Ordered on one synthetic set, tested on 200 random halves of another: the held-out risk exceeds
    epsilon in at most delta of them (+0.03 for the noise of 200 trials)."""
    ordering = evaluator("local-confidence", synthetic_evidence(b=1500, seed=6))
    path = candidate_path(ordering, CONFIG, 32)
    pool = path_losses(evaluator("local-confidence", synthetic_evidence(b=4000, seed=7)), path, risk)
    check = resplit_check(pool, RiskSpec(risk, epsilon, 0.1), FLOPS.last_exit(), 200, epsilons=[epsilon * 4])
    at = check["at_epsilon"]
    assert check["calibration_samples"] == check["held_out_samples"] == 2000
    assert at["certified_fraction"] > 0.9 and at["mean_flops_reduction"] > 0.05
    assert at["exceed_fraction"] <= 0.1 + 0.03 and at["pool_exceed_fraction"] <= 0.1
    assert check["curve"][0]["mean_flops_reduction"] > at["mean_flops_reduction"]  # a looser epsilon saves more


def test_the_pooled_check_counts_the_guarantees_own_event():
    """Candidates with known pooled risks 0 to 2 epsilon (nested 0/1 losses on 10,000 samples): at delta 0.1
    no resplit certifies one whose pooled risk exceeds epsilon, while the held-out halves, whose losses
    complete the lucky calibration halves', exceed it in more resplits; at delta 0.9, a procedure that
    guarantees little, the pooled check fails it."""
    rates = torch.linspace(0, 0.02, 41)  # (C,) pooled risk of each candidate, cheapest last
    u = torch.rand(10_000, generator=torch.Generator().manual_seed(0))
    pool = PathLosses(u < rates[:, None], (1 - rates)[:, None].expand(-1, 10_000).double())  # (C, M)
    check = resplit_check(pool, RiskSpec("consistency", 0.01, 0.1), 1.0, 200)["at_epsilon"]
    assert check["certified_fraction"] == 1.0
    assert check["pool_exceed_fraction"] <= 0.1 < check["exceed_fraction"]
    weak = resplit_check(pool, RiskSpec("consistency", 0.01, 0.9), 1.0, 200)["at_epsilon"]
    assert weak["pool_exceed_fraction"] > 0.5


@pytest.mark.parametrize("n, epsilon", [(7500, 0.005), (5000, 0.01), (2000, 0.05)])
def test_a_half_drawn_without_replacement_keeps_the_binomial_p_value_valid(n, epsilon):
    """In a resplit the calibration half is n samples drawn without replacement from a pool of 2n: where the
    pool's risk exceeds epsilon, the chance that its losses pass the binomial test (hypergeometric) is at
    most delta, as it is for samples drawn from an unbounded population."""
    passing = max_losses(n, epsilon, 0.1)
    pooled_losses = range(int(epsilon * 2 * n) + 1, int(epsilon * 2 * n) + 400)  # every pool risk above epsilon
    assert max(hypergeom.cdf(passing, 2 * n, k, n) for k in pooled_losses) <= 0.1


def test_the_certificate_holds_for_known_risks():
    """Candidates with known risks 0 to 3 epsilon (nested 0/1 losses), fresh calibration samples in each of
    1,000 trials: a candidate whose risk exceeds epsilon is certified in at most delta of them (+0.03 for
    the noise of the trials), and a weaker delta shows as more such trials."""
    rates = torch.linspace(0, 0.15, 91)  # (C,)
    u = torch.rand(1000, 2000, 1, generator=torch.Generator().manual_seed(0))  # (trials, n, 1)
    k = (u < rates).sum(1)  # (trials, C) losses per candidate
    for delta, low, high in ((0.1, 0.0, 0.13), (0.5, 0.25, 0.53)):
        i = fixed_sequence(binomial_cdf(2000, 0.05)[k], delta)  # (trials,)
        wrong = (i >= 0) & (rates[i.clamp(min=0)] > 0.05)
        assert low < wrong.double().mean() <= high
    one = certify(torch.zeros(91, 5), PathLosses(u[0].T < rates.unsqueeze(1), torch.zeros(91, 2000)),
                  RiskSpec("consistency", 0.05, 0.1))
    assert one.index == int(fixed_sequence(binomial_cdf(2000, 0.05)[k[0]], 0.1))


def test_evaluate_reports_certified_settings(run_dir):  # noqa: F811
    config = replace(FAST, risks=[RiskSpec("accuracy", 0.005, 0.1), RiskSpec("consistency", 0.3, 0.1)], resplits=20,
                     risk_path=CONFIG, calibration=CONFIG)
    evaluation = evaluate_run(run_dir, config)
    write_report(evaluation, run_dir)
    report = evaluation.report
    tight, loose = report["certified"]
    assert tight["calibration_samples"] == 64 and tight["smallest_epsilon"] > 0.005
    assert not any(e["certified"] for e in tight["policies"])  # 128 samples cannot certify 0.5%
    assert "No setting of distree can be certified at 0.5%" in certified_text(Certificate.from_json(tight))
    certified = [e for e in loose["policies"] if e["certified"]]
    assert certified and all(e["p_value"] <= 0.1 and len(e["thresholds"]) == 5 for e in certified)
    assert all(0 <= e["test"]["risk"] <= 1 for e in certified)
    assert set(loose["resplits"]) == {e["policy"] for e in loose["policies"]}
    assert all(0 <= c["at_epsilon"]["pool_exceed_fraction"] <= 1 for c in loose["resplits"].values())
    text = (run_dir / "report.md").read_text()
    assert "## Certified settings: consistency risk" in text and "not met" in text
    assert "| resplits: held-out risk > epsilon | resplits: pooled risk > epsilon |" in text
    assert (run_dir / "certified_vs_epsilon.png").stat().st_size > 0


@pytest.mark.parametrize("flags, message", [
    (["--epsilon", "0"], "epsilon must be between 0 and 1"),
    (["--delta", "1.5"], "delta must be between 0 and 1"),
    (["--risk", "latency"], "unknown risk 'latency'"),
    (["--risk", "accuracy,consistency", "--epsilon", "0.1,0.2,0.3"], "one value or one per risk"),
    (["--epsilon", "x"], "comma-separated numbers"),
])
def test_bad_risk_input_is_a_one_line_error(tmp_path, capsys, flags, message):
    assert main(["evaluate", "--run", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_consistency_of_a_run_without_students_is_a_one_line_error(tmp_path, capsys):
    write_config(tmp_path, run_config("smoke"))
    assert main(["evaluate", "--run", str(tmp_path), "--risk", "consistency"]) == 2
    err = capsys.readouterr().err
    assert "no students in" in err and err.count("\n") == 1
