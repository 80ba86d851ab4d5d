"""How the ranks share the work: each global batch of the epoch's shuffled order, and each split
that is evaluated.

Every rank draws the same seeded permutation of the training set (the order one process
draws) and cuts it into the same global batches of the configured size; rank r trains on the
r-th contiguous share of each. The global batch, the number of steps and so the learning-rate
schedule mean what they mean in one process, whatever the number of ranks.
"""
from dataclasses import dataclass

import torch

from distree.errors import DistreeError
from distree.training.ranks import Ranks


@dataclass(frozen=True)
class Share:
    """This rank's part of one global batch."""
    rows: slice  # the rows of the global batch this rank computes
    loss_scale: float  # times this rank's mean loss, so that DDP's average over the ranks is the batch's mean loss
    count: float  # how much each of its rows counts in the epoch's train metrics: 1, or 1 / world_size (below)


def share(size: int, ranks: Ranks) -> Share:
    """Rank r's contiguous rows of a global batch of `size` samples (shares differ by at most one row).

    A last batch with fewer samples than ranks is computed whole by every rank, each counting
    1 / world_size of it: every rank then has the same gradient, and DDP's average is that gradient.
    """
    k = ranks.world_size
    if size < k:
        return Share(slice(0, size), 1.0, 1 / k)
    base, extra = divmod(size, k)
    start = ranks.rank * base + min(ranks.rank, extra)
    stop = start + base + (ranks.rank < extra)
    return Share(slice(start, stop), k * (stop - start) / size, 1.0)


def eval_rows(total: int, ranks: Ranks) -> torch.Tensor:
    """The indices of a split of `total` samples this rank evaluates: its contiguous share, in order."""
    return torch.arange(total).tensor_split(ranks.world_size)[ranks.rank]


def check_batch_size(batch_size: int, ranks: Ranks) -> None:
    """A global batch must split evenly over the ranks."""
    if batch_size % ranks.world_size:
        raise DistreeError(f"batch size {batch_size} does not split over {ranks.world_size} ranks; "
                           f"choose a multiple of {ranks.world_size} (--batch-size)")
