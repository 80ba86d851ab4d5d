"""The exit gate as PyTorch and the policies see it: opcheck, torch.compile, the FLOP counter,
agreement with the Python policies it replaces, and (on a GPU) no host synchronisation."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import distree_kernels
from distree.policies.base import LocalInputs
from distree.policies.features import max_probability
from distree_kernels.exit_rules import cosine
from distree.policies.learned_gate import gate_features
from distree_kernels import exit_gate_reference
from exit_gate_cases import RULES, make_gate_args, run_decide, run_gate
from exit_head_cases import backends

OPS = {"cpp": ("exit_gate", "exit_gate_decide"), "cuda": ("exit_gate", "exit_gate_decide"),
       "triton": ("exit_gate_triton", "exit_gate_decide_triton")}


@backends
def test_opcheck(backend, device):
    if backend == "reference":
        pytest.skip("the reference is plain PyTorch, not an op")
    fused, decide = (getattr(torch.ops.distree, name) for name in OPS[backend])
    t = torch.tensor(0.5, device=device)
    for B, K, rule, inclusive in ((3, 4, "gate", True), (2, None, "max_prob", False), (0, 4, "inverse_cos", True)):
        args = make_gate_args(B, 5, 3, 2, K, K is not None, layout="channels_last", device=device)
        x, w = (a.detach().requires_grad_() if a is not None else None for a in args[:2])
        torch.library.opcheck(fused, (x, w, *args[2:], t, rule, inclusive))
        feat = torch.randn(B, 5 if K is None else K, device=device)
        torch.library.opcheck(decide, (feat, *args[3:], t, rule, inclusive))


class TinyGateModel(torch.nn.Module):
    """One stage whose exit projects to 5 classes and decides with the learned gate."""

    def __init__(self, backend):
        super().__init__()
        self.backend = backend
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.proj = torch.nn.Linear(6, 5)
        self.register_buffer("gate_weight", torch.randn(10))
        self.register_buffer("gate_bias", torch.tensor(0.1))
        self.register_buffer("threshold", torch.tensor(0.5))

    def forward(self, x, first, previous):
        return distree_kernels.exit_gate(self.conv(x), self.proj.weight, self.proj.bias, first, previous,
                                         None, self.gate_weight, self.gate_bias, self.threshold, "gate",
                                         backend=self.backend)


@backends
def test_compile_fullgraph_matches_eager(backend, device):
    torch.manual_seed(0)
    model = TinyGateModel(backend).to(device)
    x = torch.randn(4, 3, 8, 8, device=device)  # (B, C, H, W)
    first, previous = torch.randn(2, 4, 5, device=device)  # (B, K) each
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    for got, expected in zip(compiled(x, first, previous), model(x, first, previous)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    compiled(x, first, previous)[0].sum().backward()  # the backward traces too
    assert model.proj.weight.grad is not None


@backends
def test_flop_counter_counts_the_projection(backend, device):
    if backend == "reference":
        pytest.skip("the reference's matmul is counted by PyTorch itself")
    args = make_gate_args(6, 7, 3, 3, 5, True, device=device)
    with FlopCounterMode(display=False) as counter:
        run_gate(backend, args, 0.5, "gate")
    assert counter.get_total_flops() == 2 * 6 * 7 * 5
    with FlopCounterMode(display=False) as counter:  # no projection, nothing counted
        run_gate(backend, (args[0], None, None, None, None, None, None, None), 0.5, "max_prob")
    assert counter.get_total_flops() == 0


def _local_inputs(feat, args):
    """The LocalInputs a device holds at an exit, from a make_gate_args tuple's decision inputs."""
    _, _, _, first, previous, bias_share, _, _ = args
    B = feat.shape[0]
    return LocalInputs(u=feat, first=first, previous=previous, bias_share=bias_share, index=torch.arange(B),
                       student=0, exit=2)


@backends
@pytest.mark.parametrize("probabilities", [True, False])
def test_rules_match_the_python_formulas_they_replaced(backend, device, probabilities):
    """The op against the plain PyTorch the policies scored with before it: the learned gate's
    features and sigmoid, max softmax probability, and the cosine to the previous exit."""
    args = make_gate_args(5, 9, 4, 3, 6, True, probabilities, device=device)
    feat = run_gate(backend, args, 0.5, "gate")[0]
    inputs = _local_inputs(feat.cpu(), [a.cpu() if a is not None else None for a in args])
    gate_weight, gate_bias = args[6].cpu(), args[7].cpu()
    expected = {"gate": torch.sigmoid(gate_features(inputs, probabilities) @ gate_weight + gate_bias),
                "max_prob": max_probability(inputs.u + inputs.bias_share),
                "cos_previous": cosine(inputs.u, inputs.previous)}
    for rule, policy_score in expected.items():
        score = run_gate(backend, args, 0.5, rule)[1]
        torch.testing.assert_close(score.cpu(), policy_score, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(run_decide(backend, feat, args, 0.5, rule)[0].cpu(), policy_score,
                                   rtol=1e-5, atol=1e-5)


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@cuda_only
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("rule", RULES)
def test_cuda_no_sync_and_graph_replay(backend, rule):
    args = make_gate_args(128, 16, 32, 32, 10, True, device="cuda")
    t = torch.tensor(0.5, device="cuda")
    run_gate(backend, args, t, rule)  # warm up (Triton compiles here)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run_gate(backend, args, t, rule)
        run_decide(backend, args[3], args, t, rule)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        feat, score, exit = run_gate(backend, args, t, rule)
    args[0].copy_(torch.randn_like(args[0]))
    graph.replay()
    expected = exit_gate_reference(*args, t, rule, True)
    for got, exp in zip((feat, score), expected[:2]):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.equal(exit, score >= t)
