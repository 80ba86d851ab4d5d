"""WideResNet sizes, the 7-exit student, the N-student model, and fused against unfused heads."""
import pytest
import torch

from distree.errors import DistreeError
from distree.models.distree_model import DistrEEModel
from distree.models.student import Student
from distree.models.wrn import WideResNet, WRNConfig


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_wrn_sizes_match_the_spec():
    teacher = WideResNet(WRNConfig(16, 4), 10, 3)
    assert abs(count(teacher) - 2.7e6) < 0.05e6 and teacher.num_filters == 256
    a = teacher.features(torch.randn(2, 3, 32, 32))
    assert a.shape == (2, 256, 8, 8) and (a >= 0).all()  # after BN-ReLU
    assert teacher(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert abs(count(Student(10, 3)) - 0.175e6) < 0.005e6


def test_wrn_rejects_bad_depth():
    with pytest.raises(DistreeError, match="6n \\+ 4"):
        WideResNet(WRNConfig(12, 1), 10, 1)


def test_student_exits():
    s = Student(10, 1)
    assert len(s.stages) == len(s.heads) == 7
    assert [h.weight.shape[1] for h in s.heads] == [16, 16, 16, 32, 32, 64, 64]
    assert all(h.bias is None and h.weight.shape[0] == 10 for h in s.heads)
    u, maps = s(torch.randn(3, 1, 32, 32))
    assert [x.shape for x in u] == [(3, 10)] * 7
    assert [m.shape[1:] for m in maps] == [(16, 32, 32)] * 3 + [(32, 16, 16)] * 2 + [(64, 8, 8)] * 2


def test_distree_model_shapes_and_aggregator():
    m = DistrEEModel([Student(10, 1), Student(10, 1), Student(10, 1)], 10).to(memory_format=torch.channels_last)
    with torch.no_grad():
        m.bias.copy_(torch.arange(10.0))
    x = torch.randn(4, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    u, maps = m(x)
    assert u.shape == (3, 7, 4, 10) and len(maps) == 3 and len(maps[0]) == 7
    assert torch.allclose(m.aggregate(u[:, 6]), u[:, 6].sum(0) + torch.arange(10.0))


def test_projected_exit_space():
    m = DistrEEModel([Student(10, 1, exit_space="projected") for _ in range(2)], 10)
    u, _ = m(torch.randn(4, 1, 32, 32))
    assert u.shape == (2, 7, 4, 64) and m.aggregate(u[:, 3]).shape == (4, 10)
    with pytest.raises(DistreeError, match="exit_space"):
        Student(10, 1, exit_space="bogus")


def test_reference_heads_give_the_same_numbers():
    """The same student with fused and with unfused heads: same features and same gradients."""
    torch.manual_seed(0)
    fused = Student(10, 3, head_backend="auto").to(memory_format=torch.channels_last)
    unfused = Student(10, 3, head_backend="reference").to(memory_format=torch.channels_last)
    unfused.load_state_dict(fused.state_dict())
    x = torch.randn(5, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    (u_fused, _), (u_unfused, _) = fused(x), unfused(x)
    for a, b in zip(u_fused, u_unfused):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    sum(u.square().sum() for u in u_fused).backward()
    sum(u.square().sum() for u in u_unfused).backward()
    for a, b in zip(fused.parameters(), unfused.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    fused.set_head_backend("reference")
    assert all(h.backend == "reference" for h in fused.heads)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_a_walk_on_resolved_kernels_gives_the_module_walks_numbers(backend):
    """DeviceStep walks on `exit_kernels` (the heads' ops called directly, resolved once): every head
    and every gate decision the same, bit for bit, as the walk through the head modules."""
    torch.manual_seed(0)
    student = Student(10, 1, head_backend=backend).eval()
    x = torch.randn(3, 1, 28, 28)
    share, gate_weight, threshold = torch.randn(10), torch.randn(5), torch.tensor(0.5)
    outputs = []
    with torch.inference_mode():
        for kernels in (None, student.exit_kernels(torch.device("cpu"))):
            walk, out = student.walk(x, kernels), []
            for j in walk:
                out += walk.head() if j in (0, 6) else walk.decide(share, gate_weight, torch.tensor(0.1), threshold,
                                                                   "gate", True)
            outputs.append(out)
    assert len(outputs[1]) == 21
    assert all(torch.equal(a, b) for a, b in zip(*outputs))  # features, scores and stop masks


def test_outputs_do_not_depend_on_the_forward_batch():
    """`distree.data.forward_batch` picks the batch of forward passes for speed alone: every sample's
    teacher features and students' evidence are the same, bit for bit, in batches of 8, 64 and all 160,
    in the channels-last layout a run's models and inputs have (`distree.run_dir`). (Below 8 samples
    the students' convolutions round differently on the CPUs measured.)"""
    torch.manual_seed(0)
    teacher = WideResNet(WRNConfig(10, 2), 10, 1).to(memory_format=torch.channels_last).eval()
    students = DistrEEModel([Student(10, 1) for _ in range(2)], 10).to(memory_format=torch.channels_last).eval()
    x = torch.randn(160, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for forward, batch_dim in ((teacher.features, 0), (lambda b: students(b)[0], 2)):  # (B, C, 8, 8), (N, 7, B, K)
            whole = forward(x)
            for size in (8, 64):
                assert torch.equal(torch.cat([forward(b) for b in x.split(size)], batch_dim), whole)
