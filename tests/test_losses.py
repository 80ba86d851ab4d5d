"""Each loss of docs/method.md against a value computed by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from distree.losses import (LossConfig, at, at_loss, drop_students, fail_students, joint_loss, kd,
                            mixed_exit_features, pooled)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kd_by_hand(tau):
    z, y = torch.zeros(1, 2), torch.tensor([0])
    z_t = torch.tensor([[tau * math.log(3), 0.0]])  # softmax(z_t / tau) = (3/4, 1/4)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    expected = 0.7 * math.log(2) + 0.3 * tau ** 2 * kl
    assert kd(z, y, z_t, tau, alpha=0.3).item() == pytest.approx(expected, rel=1e-6)


def test_at_by_hand():
    a = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2): channel mean of A^2 = (5, 2)
    assert torch.allclose(at(a), torch.tensor([[5.0, 2.0]]) / math.sqrt(29))


def test_at_loss_pools_to_the_teachers_size():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)[None, None]  # (1,1,4,4)
    q_t = torch.full((1, 4), 0.5)
    p2 = torch.tensor([1.0, 4.0, 9.0, 16.0]) / math.sqrt(354)  # pooled (1, 2, 3, 4), squared, normalised
    assert at_loss(a, q_t).item() == pytest.approx(((p2 - 0.5) ** 2).mean().item(), rel=1e-6)


@pytest.mark.parametrize("hw", [(8, 8), (16, 16), (32, 32), (12, 12), (16, 8)])
def test_pooled_is_adaptive_average_pooling_bit_for_bit(hw):
    a = torch.randn(3, 4, *hw).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(3, 4, 8, 8)
    outs = []
    for pool in (pooled, F.adaptive_avg_pool2d):
        out = pool(a, 8)
        (grad,) = torch.autograd.grad(out, a, g)
        outs.append((out, grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_mixed_exit_features_pick_each_students_exit():
    u = (10 * torch.arange(2)[:, None] + torch.arange(7)).float().view(2, 7, 1, 1)  # u[i, j] = 10 i + j
    assert mixed_exit_features(u, torch.tensor([3, 5])).flatten().tolist() == [3.0, 15.0]


def test_drop_students():
    u = torch.ones(2, 7, 50, 3)
    assert drop_students(u, 0.0) is u
    dropped = drop_students(u, 1.0, torch.Generator().manual_seed(0))
    alive = dropped[:, 0, :, 0]  # (N, B)
    assert (alive.sum(0) == 1).all()  # every sample lost exactly one of its two students
    assert (dropped == dropped[:, :1]).all()  # at every exit alike
    assert torch.equal(drop_students(torch.ones(1, 7, 4, 3), 1.0), torch.ones(1, 7, 4, 3))  # N = 1: nothing to drop


@pytest.mark.parametrize("p", [0.1, 0.3, 0.6, 1.0])
def test_failout_drops_each_student_at_its_rate_and_never_all(p):
    n, b = 3, 20000
    u = torch.ones(n, 7, b, 2)
    assert fail_students(u, 0.0) is u
    out = fail_students(u, p, torch.Generator().manual_seed(0))
    assert (out == out[:, :1]).all()  # at every exit alike
    alive = out[:, 0, :, 0]  # (N, B)
    assert (alive.sum(0) >= 1).all()  # never every student of a sample
    # each student is lost with probability p, except when all were drawn (p^N) and it was the one kept (1/N)
    want = p - p ** n / n
    lost = 1 - alive.mean(1)  # (N,)
    assert torch.allclose(lost, torch.full((n,), want), atol=4 * (want * (1 - want) / b) ** 0.5 + 1e-9)
    if p == 1.0:
        assert (alive.sum(0) == 1).all()  # all drawn, one kept
    assert torch.equal(fail_students(torch.ones(1, 7, 4, 3), 1.0), torch.ones(1, 7, 4, 3))  # N = 1: nothing to drop


def test_joint_loss_by_hand():
    """All-zero evidence and teacher: each KD term is (1 - alpha) ln 2; matching maps: AT is 0."""
    N, B, K = 2, 3, 2
    u = torch.zeros(N, 7, B, K)
    maps = [[torch.ones(B, 4, 8, 8)] * 7 for _ in range(N)]
    q_t = at(torch.ones(B, 4, 8, 8)).expand(N, B, 64)
    cfg = LossConfig(tau=1.0, alpha=0.25)
    loss = joint_loss(u, maps, lambda v: v.sum(0), torch.zeros(B, dtype=torch.long), torch.zeros(B, K), q_t,
                      torch.tensor([0, 6]), cfg)
    assert loss.item() == pytest.approx(8 * 0.75 * math.log(2), rel=1e-6)  # 7 exits + the mixed term
    cfg.mixed_weight, cfg.exit_weights = 0.0, [2.0] + [0.0] * 6
    loss = joint_loss(u, maps, lambda v: v.sum(0), torch.zeros(B, dtype=torch.long), torch.zeros(B, K), q_t,
                      torch.tensor([0, 6]), cfg)
    assert loss.item() == pytest.approx(2 * 0.75 * math.log(2), rel=1e-6)


def test_joint_loss_weights_attention_by_beta():
    N, B, K = 1, 2, 3
    g = torch.Generator().manual_seed(0)
    u = torch.randn(N, 7, B, K, generator=g)
    maps = [[torch.rand(B, 4, 8, 8, generator=g) for _ in range(7)]]
    q_t = at(torch.rand(B, 4, 8, 8, generator=g))[None]  # (N, B, 64)
    y, z_t, exits = torch.tensor([0, 2]), torch.randn(B, K, generator=g), torch.tensor([4])
    agg = lambda v: v.sum(0)  # noqa: E731
    without = joint_loss(u, maps, agg, y, z_t, q_t, exits, LossConfig(beta=0.0))
    with_at = joint_loss(u, maps, agg, y, z_t, q_t, exits, LossConfig(beta=10.0))
    attention = sum(at_loss(maps[0][j], q_t[0]) for j in range(7))
    assert (with_at - without).item() == pytest.approx(10 * attention.item(), rel=1e-5)
