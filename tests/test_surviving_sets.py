"""The aggregator for every surviving set of students: its fit, its table, the engine and the
expected accuracy under availability."""
import itertools
import json

import pytest
import torch

from distree.costs import count_flops
from distree.errors import DistreeError
from distree.inference.degraded import expected_accuracy, set_evaluator, set_outcome
from distree.inference.engine import InferenceEngine
from distree.inference.evidence import model_evidence
from distree.models.distree_model import DistrEEModel
from distree.models.student import Student
from distree.models.surviving_sets import (SurvivingSets, aggregator_for, fit_set, fit_surviving_sets,
                                           proper_subsets)
from distree.policies import make_policy
from distree.policies.learned_gate import GATE_FEATURES
from distree.risk import last_answer, path_losses
from distree.run_dir import SURVIVING, load_surviving_sets, save_atomic, save_surviving_sets

K = 10


def tiny_model(n: int, exit_space: str = "class") -> DistrEEModel:
    torch.manual_seed(n)
    model = DistrEEModel([Student(K, 1, exit_space=exit_space, head_backend="reference") for _ in range(n)], K)
    with torch.no_grad():
        model.bias.normal_()
        if model.proj is not None:
            model.proj.weight.normal_(0, 0.1)
    return model.eval()


def test_proper_subsets_are_every_non_empty_set_but_the_whole():
    assert proper_subsets(2) == [(0,), (1,)]
    sets = proper_subsets(4)
    assert len(sets) == 2 ** 4 - 2 and len(set(sets)) == len(sets)
    assert () not in sets and (0, 1, 2, 3) not in sets


def test_fit_recovers_a_known_scale_and_bias():
    # labels drawn from softmax(2 * c + b): the fit must find scale 2 and bias b (up to the sampling noise of 20,000 draws)
    torch.manual_seed(0)
    c = 2 * torch.randn(1, 20000, K)
    b = torch.randn(K)
    labels = torch.distributions.Categorical(logits=2 * c[0] + b).sample()
    scale, bias = fit_set(c, labels, torch.zeros(K))
    assert scale.item() == pytest.approx(2.0, abs=0.1)
    assert torch.allclose(bias - bias.mean(), b - b.mean(), atol=0.1)  # softmax is blind to a shift of every logit


@pytest.mark.parametrize("exit_space", ["class", "projected"])
def test_contributions_sum_to_the_healthy_aggregate(exit_space):
    model = tiny_model(3, exit_space)
    u = torch.randn(3, 5, model.students[0].heads[0].weight.shape[0])
    assert torch.allclose(model.contributions(u).sum(0) + model.bias, model.aggregate(u), atol=1e-5)


def table_for(model, samples: int = 64) -> SurvivingSets:
    torch.manual_seed(1)
    x = torch.randn(samples, 1, 32, 32)
    ev = model_evidence(model, x, torch.arange(samples))
    return fit_surviving_sets(model, ev.u.detach(), torch.randint(0, K, (samples,)))


@pytest.mark.parametrize("exit_space", ["class", "projected"])
def test_each_set_answers_from_its_members_only(exit_space):
    model = tiny_model(3, exit_space)
    table = table_for(model, 32)
    u = torch.randn(3, 4, model.students[0].heads[0].weight.shape[0])
    assert torch.equal(aggregator_for(model, table, (0, 1, 2))(u), model.aggregate(u))  # healthy: unchanged, bit for bit
    for members in proper_subsets(3):
        garbage = u.clone()
        garbage[[i for i in range(3) if i not in members]] = 1e3  # a missing row's contents never matter
        z = aggregator_for(model, table, members)(garbage)
        a = table.sets[members]
        want = (a.scale[:, None, None] * model.contributions(u)[list(members)]).sum(0) + a.bias
        assert torch.allclose(z, want, atol=1e-5)
    zeroed = aggregator_for(model, None, (1,))(u)  # no table: the healthy aggregate with zeros
    assert torch.equal(zeroed, model.aggregate(u * torch.tensor([0.0, 1.0, 0.0])[:, None, None]))
    with pytest.raises(DistreeError, match="never empty"):
        aggregator_for(model, table, ())


def test_the_table_round_trips_and_refuses_another_n(tmp_path):
    model = tiny_model(2)
    table = table_for(model, 32)
    back = SurvivingSets.from_json(json.loads(json.dumps(table.to_json())), 2)
    for members, a in table.sets.items():
        assert torch.equal(back.sets[members].scale, a.scale) and torch.equal(back.sets[members].bias, a.bias)
    with pytest.raises(DistreeError, match="for 2 students, but the run has 3"):
        SurvivingSets.from_json(table.to_json(), 3)
    short = table.to_json()
    short["sets"] = short["sets"][:1]
    with pytest.raises(DistreeError, match="needs 2 sets"):
        SurvivingSets.from_json(short, 2)


def test_the_run_keeps_its_table_for_its_own_students(tmp_path):
    model = tiny_model(2)
    save_atomic({"model": model.state_dict()}, tmp_path / "students.pt")
    assert load_surviving_sets(tmp_path, 2) is None  # a run evaluated before surviving sets
    table = table_for(model, 32)
    save_surviving_sets(tmp_path, table)
    assert torch.equal(load_surviving_sets(tmp_path, 2).sets[(1,)].bias, table.sets[(1,)].bias)
    save_atomic({"model": tiny_model(2).state_dict(), "again": 1}, tmp_path / "students.pt")  # trained again
    assert load_surviving_sets(tmp_path, 2) is None
    (tmp_path / SURVIVING).write_text("{")
    with pytest.raises(DistreeError, match="damaged"):
        load_surviving_sets(tmp_path, 2)


@pytest.mark.parametrize("name", ["distree", "learned-gate", "confidence"])
@pytest.mark.parametrize("mode", ["compacting", "streaming"])
def test_engine_with_a_surviving_set(name, mode):
    model = tiny_model(3)
    table = table_for(model, 32)
    gate = {"weight": 0.1 * torch.randn(3, 7, len(GATE_FEATURES)), "bias": torch.zeros(3, 7)}
    policy = make_policy(name, **(gate if name == "learned-gate" else {}))
    x = torch.randn(12, 1, 32, 32)
    idx = torch.arange(12)
    t = torch.full((5,), 0.5) if name != "distree" else torch.full((5,), 1.0)
    healthy = InferenceEngine(model, policy, t).run(x, idx, mode)
    assert torch.equal(InferenceEngine(model, policy, t, (0, 1, 2), table).run(x, idx, mode).logits, healthy.logits)
    for members in [(0,), (1, 2)]:
        got = InferenceEngine(model, policy, t, members, table).run(x, idx, mode)
        missing = [i for i in range(3) if i not in members]
        assert (got.exits[missing] == -1).all()
        if policy.local:  # a local policy: members stop where they would have anyway
            assert torch.equal(got.exits[list(members)], healthy.exits[list(members)])
            want = aggregator_for(model, table, members)(healthy.sent)
            assert torch.allclose(got.logits, want, atol=1e-5)


def test_expected_accuracy_is_the_mean_over_every_failure_pattern():
    model = tiny_model(3)
    table = table_for(model, 32)
    torch.manual_seed(2)
    x, labels = torch.randn(40, 1, 32, 32), torch.randint(0, K, (40,))
    ev = model_evidence(model, x, torch.arange(40))
    ev.labels = labels
    policy = make_policy("last-exit")
    flops = count_flops(model, x[:1])
    outcomes = {m: set_outcome(model, table, ev, flops, policy, policy.default_thresholds(), m)
                for m in [(0, 1, 2)] + proper_subsets(3)}
    for p in (0.99, 0.9, 0.5):
        brute = 0.0
        for up in itertools.product([False, True], repeat=3):  # every pattern of devices up and down
            members = tuple(i for i in range(3) if up[i])
            weight = 1.0
            for u in up:
                weight *= p if u else 1 - p
            if members:
                z = aggregator_for(model, table, members)(ev.u[:, -1])
                brute += weight * (z.argmax(-1) == labels).float().mean().item()
        got = expected_accuracy({m: o.accuracy for m, o in outcomes.items()}, 3, p)
        assert got == pytest.approx(brute, abs=1e-6)
    one = outcomes[(0,)]
    assert one.flops_reduction == pytest.approx(0.0, abs=1e-6)  # last exit saves nothing


@pytest.mark.parametrize("risk", ["accuracy", "consistency"])
def test_a_sets_risk_is_against_its_own_exit_7_answer(risk):
    model = tiny_model(3)
    table = table_for(model, 32)
    torch.manual_seed(3)
    x = torch.randn(40, 1, 32, 32)
    ev = model_evidence(model, x, torch.arange(40))
    ev.labels = ev.aggregate(ev.u[:, -1]).argmax(-1)  # labels the healthy exit 7 gets right, every one
    policy = make_policy("local-confidence")
    flops = count_flops(model, x[:1])
    never = policy.default_thresholds()[None]  # (1, 5): every member to exit 7
    for members in [(0,), (1, 2)]:
        alone = set_evaluator(model, table, ev, flops, policy, members)
        assert not path_losses(alone, never, risk).loss.any()  # its own exit 7 never loses against itself
        answer = alone.evidence.logits_at(alone.exits(never[0])).argmax(-1)
        assert torch.equal(answer, last_answer(alone.evidence))
    assert (last_answer(set_evaluator(model, table, ev, flops, policy, (0,)).evidence) != ev.labels).any()  # it differs
