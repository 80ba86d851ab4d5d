"""FlopCounterMode, with no custom mapping, counts the fused exit head as it counts the unfused
reference head: its projection as a matmul, 2 * B * C * D."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import distree_kernels
from distree.models.student import Student
from exit_head_cases import backends, make_args, run


def counted(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return counter.get_total_flops()


@backends
@pytest.mark.parametrize("D", [7, None])
def test_op_counts_its_projection(backend, device, D):
    x, w, b, r = make_args(3, 5, 4, 2, D, D is not None, True, device=device)
    expected = 0 if D is None else 2 * 3 * 5 * D
    assert counted(run, backend, x, w, b, r) == expected


@pytest.mark.skipif(distree_kernels.unavailable_reason("cpp", "cpu") is not None, reason="no C++ extension")
def test_student_counts_the_same_with_fused_and_reference_heads():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    totals, heads = [], []
    for backend in ("cpp", "reference"):
        student = Student(10, 1, head_backend=backend).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            student(x)
        counts = counter.get_flop_counts()
        totals.append(counter.get_total_flops())
        heads.append([sum(counts[f"Student.heads.{j}"].values()) for j in range(len(student.heads))])
    assert totals[0] == totals[1]
    assert heads[0] == heads[1] == [2 * 2 * h.in_channels * h.out_features for h in student.heads]
