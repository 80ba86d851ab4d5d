"""The per-device walk: the fused op decides, one host read per exit at most, and the sync-free
graph walk (torch.cond on the op's decision) compiles whole and agrees with it."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from distree.inference.engine import InferenceEngine
from distree.inference.graph_walk import GraphWalk
from distree.inference.step import DeviceStep
from distree.policies import POLICIES
from inference_cases import tiny_batch, tiny_model
from test_engine import policy_with_thresholds

MODEL = tiny_model()
X, INDEX = tiny_batch()
DECIDED_BY_THE_OP = [name for name, cls in POLICIES.items() if getattr(cls, "rule", None)]


class HostReads(TorchDispatchMode):
    """Counts the ops that read a tensor's value back to the host (item, int, bool, nonzero)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.item, torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero):
            self.count += 1
        return func(*args, **(kwargs or {}))


def steps(name):
    policy, thresholds = policy_with_thresholds(name)
    engine = InferenceEngine(MODEL, policy, thresholds)
    return engine, engine.steps


def test_four_local_rules_are_decided_by_the_op():
    assert sorted(DECIDED_BY_THE_OP) == ["distree", "learned-gate", "local-confidence", "similarity"]


@pytest.mark.parametrize("name", DECIDED_BY_THE_OP)
def test_python_never_re_decides_what_the_op_decided(name, monkeypatch):
    engine, device_steps = steps(name)
    expected = [s.run(X, INDEX) for s in device_steps]

    def refuse(*args, **kwargs):
        raise AssertionError("Policy.stops was called for a policy the exit gate decides")

    monkeypatch.setattr(engine.policy, "stops", refuse)
    for step, (u, exits) in zip(device_steps, expected):
        got_u, got_exits = step.run(X, INDEX)
        assert torch.equal(got_exits, exits) and torch.equal(got_u, u)
    assert any((e < 6).any() for _, e in expected)  # some samples did exit early


@pytest.mark.parametrize("name", ["distree", "learned-gate", "random", "confidence"])
def test_compacting_reads_the_host_once_per_decision_exit_and_dense_never(name):
    engine, _ = steps(name)
    with torch.inference_mode(), HostReads() as reads:
        engine.dense(X, INDEX)
    assert reads.count == 0
    with torch.inference_mode(), HostReads() as reads:
        engine.compacting(X, INDEX)
    decisions = 5 if not engine.policy.local else 5 * len(MODEL.students)
    assert 1 <= reads.count <= decisions


@pytest.mark.parametrize("name", DECIDED_BY_THE_OP + ["last-exit"])
def test_graph_walk_compiles_whole_and_agrees_with_the_step(name):
    _, device_steps = steps(name)
    step = device_steps[0]
    walk = GraphWalk(step, X[:1])
    torch._dynamo.reset()
    compiled = torch.compile(walk, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    with torch.inference_mode():
        for b in range(4):
            u, exit = compiled(X[b:b + 1])
            want_u, want_exit = step.run(X[b:b + 1], INDEX[b:b + 1])
            assert int(exit) == int(want_exit[0])
            torch.testing.assert_close(u, want_u, rtol=1e-6, atol=1e-6)


def test_graph_walk_refuses_a_policy_the_op_does_not_decide():
    _, device_steps = steps("random")
    with pytest.raises(ValueError, match="not decided by the exit gate"):
        GraphWalk(device_steps[0], X[:1])
