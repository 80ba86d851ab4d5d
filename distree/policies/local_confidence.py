"""Local confidence: each device's own class evidence, read as a classifier."""
from distree.policies.base import LocalInputs, LocalPolicy
from distree.policies.features import max_probability


class LocalConfidencePolicy(LocalPolicy):
    """Stop at the first j >= 2 where softmax(u_j + b / N) has max >= q_j.

    u_j + b / N is (N u_j + b) / N: the aggregator's logits if every student sent this same
    evidence, at temperature N.
    """

    name = "local-confidence"
    stop_when = ">="

    def score(self, x: LocalInputs):
        return max_probability(x.u + x.bias_share)  # (B,)
