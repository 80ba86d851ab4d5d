"""The exit-head op as docs/exit_head.md describes it, checked once per backend against the
plain-PyTorch reference."""
import math

import pytest
import torch

from distree_kernels import exit_head_reference
from exit_head_cases import backends, make_args, make_x, run

# (B, C, H, W, D, bias, ref): odd sizes, with and without projection, bias and ref, B = 1.
SHAPES = [
    (3, 5, 7, 3, 6, True, True),
    (1, 13, 5, 5, 7, False, True),
    (2, 6, 3, 9, None, False, True),
    (4, 3, 1, 1, 5, True, False),
    (2, 17, 6, 5, 10, True, True),
    (9, 5, 3, 4, 6, True, True),  # a batch: the C++ kernel projects with a transposed weight
    (1, 8, 64, 65, 7, True, True),  # one large sample: its planes are pooled in parallel
]
LAYOUTS = ["contiguous", "channels_last", "sliced"]


def assert_same(out, expected, rtol=1e-5, atol=1e-5):
    feat, score, exit = out
    efeat, escore, eexit = expected
    assert feat.dtype == efeat.dtype and score.dtype == torch.float32 and exit.dtype == torch.bool
    torch.testing.assert_close(feat, efeat, rtol=rtol, atol=atol)
    torch.testing.assert_close(score, escore, rtol=rtol, atol=atol, equal_nan=True)
    assert torch.equal(exit, eexit)


@backends
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference_float32(backend, device, layout, shape):
    x, w, b, r = make_args(*shape, layout=layout, device=device)
    threshold = 1.3
    assert_same(run(backend, x, w, b, r, threshold), exit_head_reference(x, w, b, r, threshold))


def eager_exit_head(x, w, b, r):
    """The unfused composition in x's own dtype: what plain PyTorch gets in that dtype."""
    f = torch.relu(x).mean((2, 3))
    f = f if w is None else torch.nn.functional.linear(f, w, b)
    return f, 1 / torch.nn.functional.cosine_similarity(f, r, dim=1, eps=0.0)


@backends
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_half_precision_error_at_most_twice_pytorchs(backend, device, dtype, layout):
    x, w, b, r = make_args(4, 24, 6, 7, 10, True, True, layout=layout, dtype=dtype, device=device)
    up = [None if t is None else t.float() for t in (x, w, b, r)]
    feat32, score32, _ = exit_head_reference(*up)
    ours_feat, ours_score, _ = run(backend, x, w, b, r)
    eager_feat, eager_score = eager_exit_head(x, w, b, r)
    finite = torch.isfinite(score32)  # scores of cos <= 0 are +inf in every backend
    assert finite.any() and torch.equal(ours_score[~finite], score32[~finite])
    pairs = ((ours_feat, eager_feat, feat32), (ours_score[finite], eager_score[finite], score32[finite]))
    for ours, eager, exact in pairs:
        own_error = (eager.float() - exact).abs().max().item()
        our_error = (ours.float() - exact).abs().max().item()
        assert our_error <= 2 * own_error + 1e-6, (our_error, own_error)


@backends
def test_empty_batch(backend, device):
    x, w, b, r = make_args(0, 5, 3, 4, 6, True, True, device=device)
    feat, score, exit = run(backend, x, w, b, r)
    assert feat.shape == (0, 6) and score.shape == (0,) and exit.shape == (0,)
    assert feat.dtype == x.dtype and score.dtype == torch.float32 and exit.dtype == torch.bool


@backends
def test_zero_vectors_score_one(backend, device):
    x = -make_x(3, 4, 2, 3, device=device).abs()  # relu(x) = 0: feat is the zero vector
    r = torch.ones(3, 4, device=device)
    r[2] = 0  # and one zero ref
    x[2] = 1
    feat, score, exit = run(backend, x, None, None, r, 1.0)
    assert torch.equal(feat[:2], torch.zeros(2, 4, device=device))
    assert torch.equal(score, torch.ones(3, device=device))
    assert not exit.any()


@backends
def test_non_positive_cosine_scores_infinity(backend, device):
    x = torch.zeros(3, 2, 1, 1, device=device)
    x[:, :, 0, 0] = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 1.0]])
    r = torch.tensor([[0.0, 1.0], [-1.0, -1.0], [2.0, 1.0]], device=device)  # cos 0, -1, 1
    _, score, exit = run(backend, x, None, None, r, 1.5)
    assert score[0].item() == math.inf and score[1].item() == math.inf
    assert score[2].item() == pytest.approx(1.0, abs=1e-6)
    assert exit.tolist() == [True, True, False]


@backends
def test_nan_row_never_exits_and_spares_other_rows(backend, device):
    x, w, b, r = make_args(3, 5, 4, 4, 6, True, True, device=device)
    x[1, 2, 3, 1] = float("nan")
    feat, score, exit = run(backend, x, w, b, r, 0.0)
    assert torch.isnan(score[1]) and not exit[1]
    assert torch.isnan(feat[1]).all()
    clean = torch.tensor([0, 2])
    expected = exit_head_reference(x[clean], w, b, r[clean], 0.0)
    assert_same((feat[clean], score[clean], exit[clean]), expected)


@backends
def test_threshold_at_exactly_the_score_does_not_exit(backend, device):
    x, w, b, r = make_args(4, 6, 3, 3, 5, True, True, device=device)
    _, score, _ = run(backend, x, w, b, r, 1.0)
    finite = score[torch.isfinite(score)]
    assert finite.numel() > 0
    t = finite[0].clone()  # a 0-d float32 tensor on the device
    _, score_t, exit_t = run(backend, x, w, b, r, t)
    assert torch.equal(exit_t, score_t > t)
    assert not exit_t[score_t == t].any()


@backends
def test_no_ref_scores_one(backend, device):
    x, w, b, _ = make_args(3, 4, 3, 3, 5, True, False, device=device)
    _, score, exit = run(backend, x, w, b, None, 0.5)
    assert torch.equal(score, torch.ones(3, device=device)) and exit.all()


def _bad_inputs(device):
    x, w, b, r = make_args(2, 3, 4, 4, 5, True, True, device=device)
    t = torch.tensor(1.0, device=device)
    return [
        ("x must be 4-D", (x[0], w, b, r, t)),
        ("x must be float32", (x.to(torch.int32), None, None, None, t)),
        ("H \\* W = 0", (x[:, :, :0], w, b, r, t)),
        ("weight must have shape \\(D, 3\\)", (x, w[:, :2], b, r, t)),
        ("weight has dtype", (x, w.double(), b, r, t)),
        ("bias must have shape \\(5,\\)", (x, w, b[:4], r, t)),
        ("bias was given without weight", (x, None, b, None, t)),
        ("ref must have shape \\(2, 5\\)", (x, w, b, r[:1], t)),
        ("ref must have shape \\(2, 5\\)", (x, w, b, r[:, :4], t)),
        ("ref is on meta", (x, w, b, r.to("meta"), t)),
        ("threshold must be a 0-d tensor", (x, w, b, r, torch.ones(2, device=device))),
        ("threshold must be float32", (x, w, b, r, t.double())),
    ]


@backends
def test_bad_input_names_the_argument(backend, device):
    for message, args in _bad_inputs(device):
        with pytest.raises((RuntimeError, ValueError), match=message):
            run(backend, *args)


@backends
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradients_equal_reference_autograd(backend, device, layout):
    x, w, b, r = make_args(3, 6, 5, 4, 7, True, True, layout=layout, device=device)
    grads = []
    for name in ("reference", backend):
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
        feat, score, exit = run(name, leaves[0], leaves[1], leaves[2], r)
        assert not score.requires_grad and not exit.requires_grad
        (feat * torch.arange(7.0, device=device)).sum().backward()
        grads.append([t.grad for t in leaves])
    for ours, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    if layout != "sliced":  # grad_x is written in x's memory format
        assert grads[1][0].stride() == x.stride()


@backends
@pytest.mark.parametrize("projection", [True, False])
def test_gradcheck_float64(backend, device, projection):
    x, w, b, r = make_args(2, 3, 3, 2, 4 if projection else None, projection, True,
                           dtype=torch.float64, device=device)
    x = x + 0.05 * x.sign()  # keep inputs away from relu's kink at 0
    inputs = [x] + ([w, b] if projection else [])
    inputs = [t.detach().requires_grad_() for t in inputs]

    def feat_of(*ts):
        return run(backend, ts[0], *(ts[1:] if projection else (None, None)), r)[0]

    assert torch.autograd.gradcheck(feat_of, inputs, eps=1e-6, atol=1e-6)
