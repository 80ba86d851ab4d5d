"""The engine's three modes agree exactly, the dense one compiles whole, and compacting skips work."""
import pytest
import torch

from distree.inference.engine import MODES, InferenceEngine
from distree.models.student import select_rows
from distree.inference.evidence import model_evidence, policy_scores
from distree.policies import POLICIES, make_policy
from distree.policies.learned_gate import train_learned_gate
from inference_cases import N, synthetic_evidence, tiny_batch, tiny_model

MODEL = tiny_model()
X, INDEX = tiny_batch()
with torch.no_grad():
    EV = model_evidence(MODEL, X, INDEX)


def policy_with_thresholds(name):
    """A policy and per-exit thresholds halfway between two middle scores, so that some samples stop
    at each exit and no score sits on a threshold (where float noise between batch sizes could flip it)."""
    policy = train_learned_gate(synthetic_evidence(b=400)) if name == "learned-gate" else make_policy(name)
    scores = policy_scores(policy, EV)  # (N, 5, B)
    t = []
    for s in scores.transpose(0, 1).flatten(1):  # (N * B,) per exit
        s = s[s.isfinite()].sort().values
        t.append((s[len(s) // 2 - 1] + s[len(s) // 2]) / 2 if len(s) > 1 else policy.never)
    return policy, torch.tensor(t)


@pytest.mark.parametrize("name", list(POLICIES))
def test_three_modes_give_identical_predictions(name):
    engine = InferenceEngine(MODEL, *policy_with_thresholds(name))
    dense, *others = [engine.run(X, INDEX, mode) for mode in MODES]
    for other in others:
        assert torch.equal(other.exits, dense.exits)
        assert torch.equal(other.logits.argmax(-1), dense.logits.argmax(-1))
        torch.testing.assert_close(other.logits, dense.logits, rtol=1e-5, atol=1e-5)
    if name != "last-exit":
        assert dense.exits.unique().numel() > 1  # the test exercises early exits


def test_dense_mode_compiles_with_fullgraph():
    engine = InferenceEngine(MODEL, *policy_with_thresholds("distree"))
    compiled = torch.compile(engine.dense, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        got, expected = compiled(X, INDEX), engine.dense(X, INDEX)
    assert torch.equal(got.exits, expected.exits)
    torch.testing.assert_close(got.logits, expected.logits)


@pytest.mark.parametrize("name", ["distree", "confidence"])
def test_compacting_runs_each_stage_only_on_samples_still_running(name):
    engine = InferenceEngine(MODEL, *policy_with_thresholds(name))
    seen = [[0] * 7 for _ in range(N)]
    hooks = [stage.register_forward_hook(lambda m, a, out, i=i, j=j: seen[i].__setitem__(j, seen[i][j] + len(out)))
             for i, student in enumerate(MODEL.students) for j, stage in enumerate(student.stages)]
    try:
        result = engine.run(X, INDEX, "compacting")
    finally:
        for h in hooks:
            h.remove()
    for i in range(N):
        expected = [int((result.exits[i] >= j).sum()) for j in range(7)]
        assert seen[i] == expected


def test_compaction_keeps_the_channels_last_layout():
    h = torch.randn(5, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    kept = select_rows(h, torch.tensor([0, 3]))
    assert kept.is_contiguous(memory_format=torch.channels_last) and torch.equal(kept, h[[0, 3]])
