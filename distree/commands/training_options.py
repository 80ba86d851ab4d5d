"""The options train-teacher and train-students share: the schedule's, and where and how the job runs."""
from dataclasses import dataclass

import torch

from distree.training.precision import AMP_MODES, Precision, precision
from distree.training.ranks import Ranks, launched_ranks, rank_device


def add_schedule_arguments(p) -> None:
    p.add_argument("--epochs", type=int, help="training epochs (default: the preset's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="global batch size, split over the ranks under torchrun: a "
                                                   "multiple of their number (default: the preset's)")


def add_launch_arguments(p) -> None:
    p.add_argument("--device", default="cpu", help="torch device; under torchrun, cuda gives each rank "
                                                   "cuda:LOCAL_RANK (default %(default)s)")
    p.add_argument("--amp", choices=AMP_MODES, default="off",
                   help="mixed precision: %(choices)s; fp16 needs a GPU (default %(default)s)")


@dataclass(frozen=True)
class Launch:
    ranks: Ranks  # this process's rank under torchrun, or the one process
    device: torch.device
    precision: Precision


def launch(args) -> Launch:
    """This process's rank, device and precision, checked before it joins any process group."""
    ranks = launched_ranks()
    device = rank_device(ranks, args.device)
    return Launch(ranks, device, precision(args.amp, device))
