"""Aggregated confidence (SDN): the aggregator classifies at every exit."""
from distree.policies.base import PerExitPolicy
from distree.policies.features import max_probability


class ConfidencePolicy(PerExitPolicy):
    """All students stop at the first j >= 2 where softmax(sum_i u_ij + b) has max >= q_j."""

    name = "confidence"
    stop_when = ">="

    def score(self, logits):
        return max_probability(logits)  # (B,)
