"""Exits on your own CNN: a small ResNet (not a WRN) gets a fused ExitHead after each of its 7 steps,
trains with distree's joint loss on the synthetic set, then runs under the inference engine with an
exit policy calibrated on the validation split.

    python examples/own_model.py [--steps 200] [--students 2]

The network is a CIFAR-style ResNet (He et al. 2016: post-activation basic blocks): a stem, then
three stages of two blocks (8, 16, 32 channels; strides 1, 2, 2), small enough to train on a CPU
in well under a minute. What distree needs of it is
the protocol of distree/models/protocol.py: `stages` (7 modules), `heads` (7 ExitHeads) and
`walk(x)`, which subclassing `StagedStudent` provides (with a forward for training);
DistrEEModel then adds the aggregator (a sum of the students' evidence plus a bias).
There is no teacher here, so the knowledge-distillation target is the model's own last exit
(self-distillation) and attention transfer is off (beta = 0).
"""
import argparse
import math
import time

import torch
from torch import nn

from distree.calibration import CalibrationConfig, calibration_front, least_flops
from distree.costs import count_flops
from distree.data import batches, load_dataset
from distree.evaluation import one_thread
from distree.inference.engine import InferenceEngine
from distree.inference.evidence import collect_evidence
from distree.inference.outcome import PolicyEvaluator
from distree.losses import LossConfig, joint_loss
from distree.models.distree_model import DistrEEModel
from distree.models.protocol import check_model
from distree.models.student import StagedStudent
from distree.policies import LastExitPolicy, LocalConfidencePolicy
from distree_kernels import ExitHead


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)), the shortcut a 1x1 conv when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if cin == cout and stride == 1 else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))  # (B, cout, H/s, W/s)


class TinyResNet(StagedStudent):
    """Stem + 3 stages x 2 blocks = 7 steps, each followed by an exit giving K class-evidence values."""

    exit_space = "class"

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        plan = [(8, 8, 1), (8, 8, 1), (8, 16, 2), (16, 16, 1), (16, 32, 2), (32, 32, 1)]  # (cin, cout, stride)
        self.stages = nn.ModuleList([stem] + [BasicBlock(*p) for p in plan])
        widths = [8] + [cout for _, cout, _ in plan]
        self.heads = nn.ModuleList(ExitHead(c, num_classes, bias=False) for c in widths)  # no bias: the aggregator has it


def train(model: DistrEEModel, data, steps: int, batch_size: int = 16, lr: float = 0.05, seed: int = 0) -> float:
    """SGD with a cosine schedule on the joint loss; returns the last step's loss."""
    loss_cfg = LossConfig(alpha=0.5, beta=0.0)  # half self-distillation from the last exit, half labels; no AT
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    n, step, loss = len(model.students), 0, None
    model.train()
    while step < steps:
        for idx in batches(len(data.train), batch_size, True, g):
            x, y = data.train.batch(idx, augment=True, generator=g)  # (B, 3, 32, 32), (B,)
            u, maps = model(x)  # (N, 7, B, K)
            z_t = model.aggregate(u[:, -1]).detach()  # (B, K): the last exit teaches the others
            exits = torch.randint(0, 7, (n,), generator=g)  # (N,): the mixed-exit term's exits
            total = joint_loss(u, maps, model.aggregate, y, z_t, None, exits, loss_cfg)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            schedule.step()
            step, loss = step + 1, total.detach()
            if step == steps:
                break
    return loss.item()


def run(steps: int = 200, students: int = 2, seed: int = 0) -> dict:
    """Builds, trains and serves the model; the numbers the example prints."""
    with one_thread():  # a tiny CNN's small batches run faster on one thread than through OpenMP's hand-offs
        return run_here(steps, students, seed)


def run_here(steps: int, students: int, seed: int) -> dict:
    torch.manual_seed(seed)
    data = load_dataset("synthetic", val_size=64, seed=seed)
    model = DistrEEModel([TinyResNet(data.num_classes, data.in_channels) for _ in range(students)], data.num_classes)
    sample, _ = data.test.batch(torch.arange(1))  # (1, 3, 32, 32)
    check_model(model, sample)
    began = time.perf_counter()
    loss = train(model, data, steps, seed=seed)
    train_s = time.perf_counter() - began
    model.eval()

    # Calibrate a local policy on val (least FLOPs within 2 points of the last exit), measure on test.
    flops = count_flops(model, sample)
    policy, last = LocalConfidencePolicy(), LastExitPolicy()
    val, test = collect_evidence(model, data.val), collect_evidence(model, data.test)
    last_val = PolicyEvaluator(last, val, flops)(last.default_thresholds())
    front = calibration_front(PolicyEvaluator(policy, val, flops), CalibrationConfig(max_drop=0.02))
    thresholds = least_flops(front, last_val.accuracy, 0.02).thresholds  # (5,)
    on_test = PolicyEvaluator(policy, test, flops)(thresholds)

    # The engine runs the policy for real; its predictions do not depend on the mode.
    x, y = data.test.batch(torch.arange(len(data.test)))  # (M, 3, 32, 32), (M,)
    engine, index = InferenceEngine(model, policy, thresholds), torch.arange(len(y))
    compacting, dense = engine.run(x, index, "compacting"), engine.run(x, index, "dense")
    return {"train_s": train_s, "loss": loss,
            "last_exit_accuracy": PolicyEvaluator(last, test, flops)(last.default_thresholds()).accuracy,
            "policy_accuracy": (compacting.logits.argmax(1) == y).float().mean().item(),
            "flops_saved": on_test.flops_reduction,
            "modes_agree": torch.equal(compacting.logits.argmax(1), dense.logits.argmax(1)),
            "mean_exit": compacting.exits.float().mean().item() + 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--students", type=int, default=2)
    args = p.parse_args()
    r = run(args.steps, args.students)
    print(f"trained {args.steps} steps in {r['train_s']:.1f} s (last loss {r['loss']:.3f})")
    print(f"test accuracy: last exit {100 * r['last_exit_accuracy']:.1f}%, local-confidence "
          f"{100 * r['policy_accuracy']:.1f}% with {100 * r['flops_saved']:.1f}% of the FLOPs saved "
          f"(mean exit {r['mean_exit']:.2f} of 7); dense and compacting modes agree: {r['modes_agree']}")


if __name__ == "__main__":
    main()
