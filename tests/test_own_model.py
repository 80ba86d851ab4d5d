"""examples/own_model.py: a user's ResNet with ExitHeads trains with the joint loss and runs under the
engine with a calibrated policy, in under a minute; models that break the protocol are told why."""
import importlib.util
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from distree.errors import DistreeError
from distree.models.distree_model import DistrEEModel
from distree.models.protocol import check_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_model.py"


def example():
    spec = importlib.util.spec_from_file_location("own_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_own_model_trains_and_runs_under_the_engine_within_a_minute():
    began = time.perf_counter()
    r = example().run(steps=200)
    assert time.perf_counter() - began < 60
    assert r["last_exit_accuracy"] > 0.8  # 10 classes: chance is 0.1
    assert r["policy_accuracy"] >= r["last_exit_accuracy"] - 0.1 and r["flops_saved"] > 0
    assert r["modes_agree"]


def test_protocol_names_what_is_missing():
    own = example()
    sample = torch.randn(1, 3, 32, 32)
    model = DistrEEModel([own.TinyResNet(10, 3) for _ in range(2)], 10).eval()
    check_model(model, sample)
    with pytest.raises(DistreeError, match="needs `students`"):
        check_model(nn.Linear(2, 2), sample)
    del model.students[1].stages[6], model.students[1].heads[6]
    with pytest.raises(DistreeError, match="student 1 has 6 stages and 6 heads"):
        check_model(model, sample)
    model.students[1].stages.append(nn.Identity())
    model.students[1].heads.append(nn.Linear(32, 10))
    with pytest.raises(DistreeError, match="must be distree_kernels.ExitHead"):
        check_model(model, sample)
