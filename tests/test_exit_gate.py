"""The exit-gate contract, checked once per backend against the plain-PyTorch reference
(distree_kernels/exit_gate_reference.py), and against the policies whose decisions it fuses."""
import math

import pytest
import torch

from distree_kernels import exit_gate_reference, exit_head
from distree_kernels.exit_rules import rule_score
from exit_gate_cases import RULES, THRESHOLDS, make_gate_args, run_decide, run_gate
from exit_head_cases import backends
from test_exit_head import eager_exit_head

# (B, C, H, W, K, bias, probabilities): odd sizes, with and without projection and bias,
# F = 5 + K and F = 5, B = 1, and a batch (the C++ kernel's transposed-weight projection).
SHAPES = [
    (3, 5, 7, 3, 6, True, True),
    (1, 13, 5, 5, 7, False, False),
    (2, 6, 3, 9, None, False, True),
    (9, 5, 3, 4, 6, True, True),
]
LAYOUTS = ["contiguous", "channels_last", "sliced"]
TOL = 1e-5  # float32 feat and score against the reference (also for "gate": sigmoid in float32)


def assert_matches_reference(out, expected, threshold, inclusive):
    feat, score, exit = out
    efeat, escore, _ = expected
    assert feat.dtype == efeat.dtype and score.dtype == torch.float32 and exit.dtype == torch.bool
    torch.testing.assert_close(feat, efeat, rtol=TOL, atol=TOL)
    torch.testing.assert_close(score, escore, rtol=TOL, atol=TOL, equal_nan=True)
    # exit is exactly the comparison on the backend's own score, NaN never exits
    assert torch.equal(exit, score >= threshold if inclusive else score > threshold)


@backends
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference_float32(backend, device, shape, layout, rule):
    args = make_gate_args(*shape, layout=layout, device=device)
    t = THRESHOLDS[rule]
    for inclusive in (True, False):
        expected = exit_gate_reference(*args, torch.tensor(t, device=device), rule, inclusive)
        assert_matches_reference(run_gate(backend, args, t, rule, inclusive), expected, t, inclusive)
        feat = expected[0]
        score, exit = run_decide(backend, feat, args, t, rule, inclusive)
        torch.testing.assert_close(score, expected[1], rtol=TOL, atol=TOL, equal_nan=True)
        assert torch.equal(exit, score >= t if inclusive else score > t)


@backends
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rule", RULES)
def test_half_precision_error_at_most_twice_pytorchs(backend, device, dtype, rule):
    args = make_gate_args(4, 24, 6, 7, 10, True, layout="channels_last", dtype=dtype, device=device)
    t = torch.tensor(THRESHOLDS[rule], device=device)
    up = [a.float() if a.is_floating_point() else a for a in args[:5]] + list(args[5:])
    feat32, score32, _ = exit_gate_reference(*up, t, rule, True)
    ours_feat, ours_score, _ = run_gate(backend, args, t, rule)
    # plain PyTorch in x's dtype: the eager head, then the same decision math in that dtype
    eager_feat, _ = eager_exit_head(*args[:3], args[3])  # (B, K) in dtype
    eager_score = rule_score(eager_feat, *args[3:], rule)  # (B,), computed in dtype
    finite = torch.isfinite(score32)  # cos <= 0 is +inf in every backend
    assert finite.any() and torch.equal(ours_score[~finite], score32[~finite])
    pairs = ((ours_feat, eager_feat, feat32), (ours_score[finite], eager_score[finite], score32[finite]))
    for ours, eager, exact in pairs:
        own_error = (eager.float() - exact).abs().max().item()
        our_error = (ours.float() - exact).abs().max().item()
        assert our_error <= 2 * own_error + 1e-6, (our_error, own_error)


@backends
def test_empty_batch(backend, device):
    args = make_gate_args(0, 5, 3, 4, 6, True, device=device)
    feat, score, exit = run_gate(backend, args, 0.5, "gate")
    assert feat.shape == (0, 6) and score.shape == (0,) and exit.shape == (0,)
    assert feat.dtype == args[0].dtype and score.dtype == torch.float32 and exit.dtype == torch.bool
    score, exit = run_decide(backend, feat, args, 0.5, "gate")
    assert score.shape == (0,) and exit.shape == (0,)


@backends
def test_zero_vectors(backend, device):
    # relu(x) = 0 for samples 0 and 1: feat is the zero vector; sample 2 has a zero first.
    x = -torch.rand(3, 4, 2, 3, device=device)  # (B, C, H, W)
    x[2] = 1
    first = torch.ones(3, 4, device=device)  # (B, K)
    first[2] = 0
    previous = torch.ones(3, 4, device=device)  # (B, K)
    bias_share = torch.tensor([0.0, 1.0, 2.0, 3.0], device=device)  # (K,)
    gw, gb = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0], device=device), torch.tensor(0.0, device=device)
    args = (x, None, None, first, previous, bias_share, gw, gb)
    assert torch.equal(run_gate(backend, args, 1.0, "inverse_cos")[1], torch.ones(3, device=device))
    assert torch.equal(run_gate(backend, args, 1.0, "cos_previous")[1][:2], torch.ones(2, device=device))
    # gate = sigmoid(cos_first + cos_previous) = sigmoid(2) where both cosines are 1 by the rule
    gate = run_gate(backend, args, 0.5, "gate")[1]
    torch.testing.assert_close(gate[:2], torch.full((2,), 1 / (1 + math.exp(-2.0)), device=device))
    # max_prob of a zero feat is softmax(bias_share)'s largest probability
    expected = bias_share.softmax(0).max()
    torch.testing.assert_close(run_gate(backend, args, 0.5, "max_prob")[1][:2], expected.expand(2))


@backends
def test_non_positive_cosine(backend, device):
    x = torch.zeros(3, 2, 1, 1, device=device)  # (B, C, H, W)
    x[:, :, 0, 0] = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 1.0]])
    ref = torch.tensor([[0.0, 1.0], [-1.0, -1.0], [2.0, 1.0]], device=device)  # cos 0, -1, 1
    args = (x, None, None, ref, ref, None, None, None)
    _, score, exit = run_gate(backend, args, 1.5, "inverse_cos", inclusive=False)
    assert score[0].item() == math.inf and score[1].item() == math.inf
    assert score[2].item() == pytest.approx(1.0, abs=1e-6)
    assert exit.tolist() == [True, True, False]
    _, cos, _ = run_gate(backend, args, 0.0, "cos_previous")
    torch.testing.assert_close(cos, torch.tensor([0.0, -1.0, 1.0], device=device), atol=1e-6, rtol=0)


@backends
@pytest.mark.parametrize("rule", RULES)
def test_nan_row_never_exits_and_spares_other_rows(backend, device, rule):
    args = list(make_gate_args(3, 5, 4, 4, 6, True, device=device))
    args[0][1, 2, 3, 1] = float("nan")
    t = torch.tensor(-math.inf, device=device)  # every non-NaN score passes
    feat, score, exit = run_gate(backend, args, t, rule)
    assert torch.isnan(score[1]) and not exit[1] and exit[[0, 2]].all()
    assert torch.isnan(feat[1]).all()
    clean = torch.tensor([0, 2])
    rows = [a[clean] if a is not None and a.dim() > 0 and a.shape[0] == 3 else a for a in args]
    rows[1:3] = args[1:3]  # weight and bias are not per sample
    expected = exit_gate_reference(*rows, t, rule, True)
    assert_matches_reference((feat[clean], score[clean], exit[clean]), expected, t, True)


@backends
@pytest.mark.parametrize("rule", RULES)
def test_threshold_at_exactly_the_score(backend, device, rule):
    args = make_gate_args(4, 6, 3, 3, 5, True, device=device)
    _, score, _ = run_gate(backend, args, 0.0, rule)
    t = score[torch.isfinite(score)][0].clone()  # a 0-d float32 tensor on the device
    for inclusive in (True, False):
        _, score_t, exit_t = run_gate(backend, args, t, rule, inclusive)
        at = score_t == t
        assert at.any() and bool(exit_t[at].all()) == inclusive
        assert torch.equal(exit_t, score_t >= t if inclusive else score_t > t)


def _bad_inputs(device):
    """(message, fused args, decide args or None) for each bad input."""
    x, w, b, first, prev, bs, gw, gb = make_gate_args(2, 3, 4, 4, 5, True, device=device)
    t = torch.tensor(0.5, device=device)
    feat = torch.zeros(2, 5, device=device)

    def both(message, rule="gate", **bad):
        names = ("first", "previous", "bias_share", "gate_weight", "gate_bias", "threshold")
        given = dict(zip(names, (first, prev, bs, gw, gb, t)), **bad)
        d = [given[n] for n in names]
        return message, (x, w, b, *d, rule), (feat, *d, rule)

    return [
        ("exit_gate: x must be 4-D", (x[0], w, b, first, prev, bs, gw, gb, t, "gate"), None),
        ("exit_gate: x must be float32", (x.int(), None, None, None, None, None, None, None, t, "max_prob"), None),
        ("exit_gate: x has H \\* W = 0", (x[:, :, :0], w, b, first, prev, bs, gw, gb, t, "gate"), None),
        ("exit_gate: weight must have shape \\(D, 3\\)", (x, w[:, :2], b, first, prev, bs, gw, gb, t, "gate"), None),
        ("exit_gate: weight has dtype", (x, w.double(), b, first, prev, bs, gw, gb, t, "gate"), None),
        ("exit_gate: bias must have shape \\(5,\\)", (x, w, b[:4], first, prev, bs, gw, gb, t, "gate"), None),
        ("exit_gate: bias was given without weight", (x, None, b, None, None, None, None, None, t, "max_prob"), None),
        ("exit_gate_decide: feat must be 2-D", None, (feat[0], first, prev, bs, gw, gb, t, "gate")),
        ("exit_gate_decide: feat must be float32", None, (feat.int(), first, prev, bs, gw, gb, t, "gate")),
        both("unknown rule 'fast'; choose one of 'inverse_cos', 'max_prob', 'cos_previous', 'gate'", rule="fast"),
        both("rule 'inverse_cos' needs first, got None", rule="inverse_cos", first=None),
        both("rule 'cos_previous' needs previous, got None", rule="cos_previous", previous=None),
        both("rule 'gate' needs first, got None", first=None),
        both("rule 'gate' needs previous, got None", previous=None),
        both("rule 'gate' needs gate_weight, got None", gate_weight=None),
        both("rule 'gate' needs gate_bias, got None", gate_bias=None),
        both("first must have shape \\(2, 5\\) = \\(B, K\\), got \\[1, 5\\]", first=first[:1]),
        both("previous must have shape \\(2, 5\\) = \\(B, K\\), got \\[2, 4\\]", previous=prev[:, :4]),
        both("first has dtype \\S+ but (x|feat) has dtype", first=first.double()),
        both("previous is on meta", previous=prev.to("meta")),
        both("bias_share must have shape \\[5\\], got \\[4\\]", bias_share=bs[:4]),
        both("bias_share must be float32, got", bias_share=bs.double()),
        both("gate_weight must have shape \\(5,\\) or \\(5 \\+ K,\\) = \\(10,\\), got \\[7\\]", gate_weight=gw[:7]),
        both("gate_weight must have shape .*, got \\[2, 5\\]", gate_weight=gw[:10].view(2, 5)),
        both("gate_weight must be float32", gate_weight=gw.double()),
        both("gate_bias must have shape \\[\\], got \\[1\\]", gate_bias=gb.view(1)),
        both("threshold must be a 0-d tensor", threshold=torch.ones(2, device=device)),
        both("threshold must be float32", threshold=t.double()),
        ("rule 'gate' needs K >= 2 classes for the margin, got K = 1",
         (x, w[:1], b[:1], first[:, :1], prev[:, :1], bs[:1], gw[:6], gb, t, "gate"),
         (feat[:, :1], first[:, :1], prev[:, :1], bs[:1], gw[:6], gb, t, "gate")),
    ]


@backends
def test_bad_input_names_the_argument(backend, device):
    for message, fused, decide in _bad_inputs(device):
        if fused is not None:
            with pytest.raises(RuntimeError, match=message):
                run_gate(backend, fused[:-2], fused[-2], fused[-1])
        if decide is not None:
            with pytest.raises(RuntimeError, match=message):
                run_decide(backend, decide[0], (None,) * 3 + decide[1:-2], decide[-2], decide[-1])


@backends
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradients_equal_reference_autograd(backend, device, layout):
    args = make_gate_args(3, 6, 5, 4, 7, True, layout=layout, device=device)
    grads = []
    for name in ("reference", backend):
        leaves = [t.detach().clone().requires_grad_() for t in args[:3]]
        feat, score, exit = run_gate(name, (*leaves, *args[3:]), 0.5, "gate")
        assert not score.requires_grad and not exit.requires_grad
        (feat * torch.arange(7.0, device=device)).sum().backward()  # (B, K) weighted
        grads.append([t.grad for t in leaves])
    for ours, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


@backends
@pytest.mark.parametrize("projection", [True, False])
def test_gradcheck_float64(backend, device, projection):
    args = make_gate_args(2, 3, 3, 2, 4 if projection else None, projection, dtype=torch.float64,
                          device=device)
    x = args[0] + 0.05 * args[0].sign()  # keep inputs away from relu's kink at 0
    inputs = [t.detach().requires_grad_() for t in [x] + (list(args[1:3]) if projection else [])]

    def feat_of(*ts):
        head = ts if projection else (ts[0], None, None)
        return run_gate(backend, (*head, *args[3:]), 0.5, "gate")[0]

    assert torch.autograd.gradcheck(feat_of, inputs, eps=1e-6, atol=1e-6)


def test_fused_score_is_bit_identical_to_decide_on_cpp():
    for shape in SHAPES:
        args = make_gate_args(*shape, layout="channels_last")
        for rule in RULES:
            feat, score, exit = run_gate("cpp", args, THRESHOLDS[rule], rule)
            score_d, exit_d = run_decide("cpp", feat, args, THRESHOLDS[rule], rule)
            assert torch.equal(score, score_d) and torch.equal(exit, exit_d), (shape, rule)


def test_feat_and_inverse_cos_bit_identical_to_exit_head_on_cpp():
    for shape in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            args = make_gate_args(*shape, dtype=dtype)
            feat, score, exit = run_gate("cpp", args, 1.3, "inverse_cos", inclusive=False)
            head = exit_head(*args[:3], args[3], 1.3, backend="cpp")
            for ours, theirs in zip((feat, score, exit), head):
                assert torch.equal(ours, theirs), (shape, dtype)


@backends
def test_pool_of_planes_in_blocks_of_eight(backend, device):
    # float32 NCHW planes whose size is a multiple of 8 are pooled 8 at a time by the C++
    # kernel: C = 19 is two blocks and a tail; a NaN stays in its own channel.
    args = list(make_gate_args(4, 19, 4, 6, None, False, device=device))
    args[0][2, 9, 1, 3] = float("nan")
    t = torch.tensor(0.5, device=device)
    feat, score, _ = run_gate(backend, args, t, "max_prob")
    expected = exit_gate_reference(*args, t, "max_prob", True)[0]
    torch.testing.assert_close(feat, expected, rtol=TOL, atol=TOL, equal_nan=True)
    assert feat.isnan().nonzero().tolist() == [[2, 9]] and score.isnan().tolist() == [False, False, True, False]
    head_feat = exit_head(args[0], backend=backend)[0]
    torch.testing.assert_close(head_feat, expected, rtol=TOL, atol=TOL, equal_nan=True)
