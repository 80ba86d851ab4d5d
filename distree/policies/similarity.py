"""Similarity baseline: stop once two consecutive exits agree."""
from distree.policies.base import LocalInputs, LocalPolicy
from distree.policies.features import cosine


class SimilarityPolicy(LocalPolicy):
    """Stop at the first j >= 2 with cos(u_j, u_{j-1}) >= tau_j."""

    name = "similarity"
    stop_when = ">="

    def score(self, x: LocalInputs):
        return cosine(x.u, x.previous)  # (B,)
