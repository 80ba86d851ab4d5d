"""Similarity baseline: stop once two consecutive exits agree."""
from distree.policies.base import LocalPolicy


class SimilarityPolicy(LocalPolicy):
    """Stop at the first j >= 2 with cos(u_j, u_{j-1}) >= tau_j (1 where either vector is 0)."""

    name = "similarity"
    rule = "cos_previous"
    stop_when = ">="
