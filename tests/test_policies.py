"""Every policy's score, its exit choice, and the helpers of the random and learned policies."""
import pytest
import torch

from distree.errors import DistreeError
from distree.inference.evidence import policy_exits, policy_scores
from distree.policies import NUM_EXITS, POLICIES, LearnedGatePolicy, LocalInputs, check_thresholds, make_policy
from distree.policies.features import entropy, max_probability
from distree.policies.learned_gate import gate_features, train_learned_gate, unchanged_answer
from distree.policies.random_exit import RandomPolicy, matching_thresholds, uniform_thresholds
from distree_kernels import exit_gate_decide
from distree_kernels.exit_rules import cosine, inverse_cosine
from inference_cases import K, N, synthetic_evidence

EV = synthetic_evidence(b=600)
SIMPLE = [name for name in POLICIES if name != "learned-gate"]


def test_exit_is_the_first_passing_exit_else_the_last():
    policy = make_policy("distree")
    scores = torch.tensor([[[1.0, 3.0, 1.0], [3.0, 3.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [3.0, 1.0, 1.0]]])
    exits = policy.exits(scores, torch.full((5,), 2.0))  # scores (1, 5, 3)
    assert exits.tolist() == [[2, 1, 6]]  # 0-based: exits 3, 2 and 7


@pytest.mark.parametrize("name", SIMPLE)
def test_never_stops_nobody_and_always_stops_everybody_at_exit_2(name):
    policy = make_policy(name)
    scores = policy_scores(policy, EV)
    assert scores.shape == (N, 5, 600)
    assert (policy.exits(scores, policy.never) == NUM_EXITS - 1).all()
    expected = NUM_EXITS - 1 if not policy.exits_early else 1
    assert (policy.exits(scores, policy.always) == expected).all()


@pytest.mark.parametrize("name", ["confidence", "entropy"])
def test_per_exit_policies_stop_all_students_together(name):
    policy = make_policy(name)
    t = policy_scores(policy, EV)[0].median(dim=1).values  # (5,)
    exits = policy_exits(policy, EV, t)  # (N, B)
    assert (exits == exits[0]).all() and exits.unique().numel() > 1


def test_local_scores_follow_their_definitions():
    x = EV.local_inputs(1, 3)
    expected_cos = torch.nn.functional.cosine_similarity(x.u, x.previous, dim=-1)
    torch.testing.assert_close(make_policy("similarity").score(x), expected_cos)
    expected_max = (x.u + EV.bias / N).softmax(-1).max(-1).values
    torch.testing.assert_close(make_policy("local-confidence").score(x), expected_max)
    torch.testing.assert_close(make_policy("distree").score(x), inverse_cosine(x.u, x.first), rtol=1e-3, atol=1e-5)
    logits = EV.aggregate(EV.u[:, 3])
    p = logits.softmax(-1)
    torch.testing.assert_close(make_policy("entropy").score(logits), -(p * p.log()).sum(-1))


def test_features_follow_the_op_rules_on_zero_vectors():
    u = torch.tensor([[0.0, 0.0], [1.0, 0.0], [float("nan"), 1.0], [float("nan"), 0.0]])
    v = torch.tensor([[1.0, 2.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    assert cosine(u, v)[:2].tolist() == [1.0, 0.0] and cosine(u, v)[2:].isnan().all()  # NaN stays NaN, as in the op
    assert max_probability(torch.zeros(1, 4)).item() == 0.25
    assert entropy(torch.zeros(1, 4)).item() == pytest.approx(torch.log(torch.tensor(4.0)).item())


@pytest.mark.parametrize("probabilities", [True, False])
def test_the_gate_is_fitted_on_the_features_the_op_decides_with(probabilities):
    """gate_features (what the learned gate is fitted on) against the fused op's score (what it
    decides with), edge rows included: a zero vector, a NaN and a probability that underflows."""
    torch.manual_seed(3)
    x = EV.local_inputs(0, 3)
    u, first, previous = x.u[:6].clone(), x.first[:6].clone(), x.previous[:6].clone()  # (6, K)
    first[0] = 0.0
    previous[1, 2] = float("nan")
    u[2, 0] = 200.0  # softmax's other probabilities underflow to 0: entropy takes 0 log 0 = 0
    x = LocalInputs(u, first, previous, x.bias_share, torch.arange(6), 0, 3)
    features = gate_features(x, probabilities)  # (6, F)
    weight, bias = torch.randn(features.shape[1]), torch.tensor(0.3)
    score, _ = exit_gate_decide(u, first, previous, x.bias_share, weight, bias, 0.5, "gate", backend="cpp")
    torch.testing.assert_close(torch.sigmoid(features @ weight + bias), score, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert features[1].isnan().any() and score[1].isnan() and features[[0, 2]].isfinite().all()
    gate = LearnedGatePolicy(weight.expand(2, 7, -1).clone(), bias.expand(2, 7).clone())
    torch.testing.assert_close(gate.score(x), score, equal_nan=True)


def test_random_is_seeded_uniform_and_can_match_a_histogram():
    uniform = policy_exits(RandomPolicy(seed=3), EV, uniform_thresholds())  # (N, B)
    assert torch.equal(uniform, policy_exits(RandomPolicy(seed=3), EV, uniform_thresholds()))
    assert not torch.equal(uniform, policy_exits(RandomPolicy(seed=4), EV, uniform_thresholds()))
    counts = torch.bincount(uniform.flatten(), minlength=NUM_EXITS).float() / uniform.numel()
    assert counts[0] == 0 and (counts[1:] - 1 / 6).abs().max() < 0.04
    target = torch.tensor([0, 500, 100, 0, 200, 100, 300.0])
    matched = policy_exits(RandomPolicy(), EV, matching_thresholds(target))
    counts = torch.bincount(matched.flatten(), minlength=NUM_EXITS).float() / matched.numel()
    assert (counts - target / target.sum()).abs().max() < 0.04


def test_unchanged_answer_swaps_one_student_to_its_exit():
    u = torch.zeros(2, 7, 1, 3)
    u[:, 6, 0] = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])  # both last exits say class 0
    u[0, 2, 0] = torch.tensor([0, 5.0, 0])  # student 0's exit 3 would flip the answer
    same = unchanged_answer(u, lambda s: s.sum(0))  # (2, 7, 1)
    assert not same[0, 2, 0] and same[0, 6, 0] and same[1].all()


def test_learned_gate_learns_which_exits_keep_the_answer():
    gate = train_learned_gate(EV)
    targets = unchanged_answer(EV.u, EV.aggregate)  # (N, 7, B)
    for i in range(N):
        for j in (4, 5):
            p = gate.score(EV.local_inputs(i, j))  # (B,)
            assert ((p >= 0) & (p <= 1)).all()
            assert p[targets[i, j]].mean() > p[~targets[i, j]].mean() + 0.1
    assert gate_features(EV.local_inputs(0, 2)).shape == (600, 5 + K)
    assert gate_features(EV.local_inputs(0, 2), class_probabilities=False).shape == (600, 5)
    again = type(gate).from_state_dict(gate.state_dict())
    torch.testing.assert_close(again.score(EV.local_inputs(0, 2)), gate.score(EV.local_inputs(0, 2)))


def test_bad_thresholds_and_names_are_clear_errors():
    assert check_thresholds(1.2).shape == (5,)
    with pytest.raises(DistreeError, match="5 values"):
        check_thresholds([1.1, 1.2])
    with pytest.raises(DistreeError, match="unknown policy"):
        make_policy("oracle-of-delphi")
    assert K == EV.u.shape[-1]
