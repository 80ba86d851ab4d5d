"""What the 6 added exits cost: parameters and FLOPs as a share of the students, and the
wall-clock time they add to a training step with fused and with unfused heads.

FLOPs are counted by torch.utils.flop_counter on the reference heads (the fused op has no
FLOP formula): it counts the heads' matrix products, not their ReLU and pool.
"""
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from distree.models.distree_model import DistrEEModel
from distree.models.student import Student

ADDED_EXITS = range(6)  # heads 1..6; head 7 is the classifier every student has anyway


def exit_params_and_flops(num_classes: int = 10, in_channels: int = 1, width: int = 1) -> dict:
    """Parameters and FLOPs (one 32x32 image) of the 6 added exits, as counts and % of a student."""
    student = Student(num_classes, in_channels, width, head_backend="reference").eval()
    params = sum(p.numel() for p in student.parameters())
    added_params = sum(p.numel() for j in ADDED_EXITS for p in student.heads[j].parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        student(torch.randn(1, in_channels, 32, 32))
    counts = counter.get_flop_counts()
    added_flops = sum(sum(counts.get(f"Student.heads.{j}", {}).values()) for j in ADDED_EXITS)
    flops = counter.get_total_flops()
    return {"student_params": params, "exit_params": added_params, "exit_params_percent": 100 * added_params / params,
            "student_flops": flops, "exit_flops": added_flops, "exit_flops_percent": 100 * added_flops / flops}


def training_step(model: DistrEEModel, x: torch.Tensor, y: torch.Tensor, exits: range, optimizer) -> None:
    """One SGD step with cross-entropy at the given exits only (heads elsewhere are not run)."""
    u = [[] for _ in exits]
    for student in model.students:
        walk = student.walk(x)
        for j in walk:
            if j in exits:
                u[exits.index(j)].append(walk.head(score=False)[0])  # (B, K)
    loss = sum(F.cross_entropy(model.aggregate(torch.stack(uj)), y) for uj in u)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def exit_step_time(num_students: int = 2, num_classes: int = 10, in_channels: int = 1, width: int = 1,
                   batch_size: int = 128, repeats: int = 5, backends=("auto", "reference")) -> dict:
    """Median seconds of a training step with all 7 exits and with the last exit only, per head backend."""
    torch.manual_seed(0)
    x = torch.randn(batch_size, in_channels, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch_size,))
    result = {}
    for backend in backends:
        model = DistrEEModel([Student(num_classes, in_channels, width, head_backend=backend)
                              for _ in range(num_students)], num_classes).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        times = {"all": [], "last": []}
        for _ in range(repeats + 1):  # the first round warms up
            for name, exits in (("all", range(7)), ("last", range(6, 7))):
                began = time.perf_counter()
                training_step(model, x, y, exits, optimizer)
                times[name].append(time.perf_counter() - began)
        all_s, last_s = (statistics.median(t[1:]) for t in times.values())
        result[backend] = {"all_exits_s": all_s, "last_exit_s": last_s,
                           "exit_cost_percent": 100 * (all_s - last_s) / last_s}
    return result
