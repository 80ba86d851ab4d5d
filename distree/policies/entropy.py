"""Aggregated entropy (BranchyNet): the aggregator classifies at every exit."""
from distree.policies.base import PerExitPolicy
from distree.policies.features import entropy


class EntropyPolicy(PerExitPolicy):
    """All students stop at the first j >= 2 where softmax(sum_i u_ij + b) has entropy <= h_j."""

    name = "entropy"
    stop_when = "<="

    def score(self, logits):
        return entropy(logits)  # (B,)
