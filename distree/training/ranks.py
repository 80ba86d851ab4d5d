"""The ranks of a training job: who this process is under torchrun, the process group it joins,
and the few collectives training needs (sums, gathering rows, rank 0's buffers, DDP).

Without torchrun's variables a job is one process (rank 0 of 1) and nothing here touches
torch.distributed, so one-process training runs exactly the code it always ran. Under torchrun
every rank reads the same run directory (one machine, or a filesystem every node sees) and only
rank 0 writes to it.
"""
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from distree.errors import DistreeError

LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets for each rank


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the rank's index on its machine: its GPU

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes checkpoints, metrics and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Ranks()


def launched_ranks() -> Ranks:
    """This process's rank from torchrun's variables, or SINGLE when WORLD_SIZE is not set."""
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    missing = [k for k in LAUNCH_ENV if k not in os.environ]
    if missing:
        raise DistreeError(f"WORLD_SIZE is set but {', '.join(missing)} not: start distributed training with "
                           "`torchrun --nproc-per-node K -m distree ...`, or unset WORLD_SIZE for one process")
    try:
        ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    except ValueError:
        raise DistreeError("RANK, LOCAL_RANK and WORLD_SIZE must be integers") from None
    if not 0 <= ranks.rank < ranks.world_size:
        raise DistreeError(f"RANK {ranks.rank} is not between 0 and WORLD_SIZE - 1 = {ranks.world_size - 1}")
    return ranks


def rank_device(ranks: Ranks, device: str) -> torch.device:
    """The device this rank computes on: --device itself, or with several ranks on CUDA, cuda:LOCAL_RANK."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DistreeError(f"--device {device!r} is not a torch device") from None
    if ranks.distributed and dev.type == "cuda":
        if dev.index is not None:
            raise DistreeError(f"--device {device}: with several ranks pass --device cuda; each takes cuda:LOCAL_RANK")
        return torch.device("cuda", ranks.local_rank)
    return dev


@contextmanager
def joined(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """The process group for the job's duration (NCCL on CUDA, gloo on the CPU); nothing for one process."""
    if not ranks.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                            device_id=device if device.type == "cuda" else None)
    try:
        yield
    finally:
        dist.destroy_process_group()


def main_first(ranks: Ranks, load):
    """load() on rank 0, then on the others, which find what it wrote (a folder dataset's image
    cache) instead of writing it at once; a DistreeError on rank 0 is raised on every rank."""
    if not ranks.distributed:
        return load()
    error = [None]
    if ranks.main:
        try:
            return load()
        except DistreeError as err:
            error = [str(err)]
            raise
        finally:
            dist.broadcast_object_list(error, 0)
    dist.broadcast_object_list(error, 0)
    if error[0] is not None:
        raise DistreeError(error[0])
    return load()


def all_sum(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The sum of `values` over the ranks, on values' device (values itself for one process)."""
    if not ranks.distributed:
        return values
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else values.device
    total = values.to(on)
    dist.all_reduce(total)
    return total.to(values.device)


def gather_rows(part: torch.Tensor, total: int, ranks: Ranks, dim: int = 0) -> torch.Tensor:
    """Every rank's rows along dim, in rank order: the whole (..., total, ...) tensor on every rank.

    Rank r holds the rows eval_rows(total, ranks) gives it; parts are padded to equal length
    for all_gather, which needs equal sizes, and the padding is cut off again.
    """
    if not ranks.distributed:
        return part
    size = -(-total // ranks.world_size)  # the largest part: tensor_split gives the first ranks one more
    pad = list(part.shape)
    pad[dim] = size - part.shape[dim]
    padded = torch.cat([part, part.new_zeros(pad)], dim)
    parts = [torch.empty_like(padded) for _ in range(ranks.world_size)]
    dist.all_gather(parts, padded.contiguous())
    lengths = [len(r) for r in torch.arange(total).tensor_split(ranks.world_size)]
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, lengths)], dim)


def sync_buffers(model: torch.nn.Module, ranks: Ranks) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank: the model rank 0 saves.

    DDP sends them before each training forward, after which each rank updates its own from
    its batch; evaluating after that would not be evaluating the checkpointed model.
    """
    if ranks.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def data_parallel(model: torch.nn.Module, device: torch.device, ranks: Ranks) -> torch.nn.Module:
    """The module training calls: DDP around it with several ranks (gradients averaged in backward), else itself.

    Checkpoints save `model`, never the wrapper, so they load in one process and under any number of ranks.
    """
    if not ranks.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
