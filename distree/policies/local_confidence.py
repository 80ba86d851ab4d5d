"""Local confidence: each device's own class evidence, read as a classifier."""
from distree.policies.base import LocalPolicy


class LocalConfidencePolicy(LocalPolicy):
    """Stop at the first j >= 2 where softmax(u_j + b / N) has max >= q_j.

    u_j + b / N is (N u_j + b) / N: the aggregator's logits if every student sent this same
    evidence, at temperature N.
    """

    name = "local-confidence"
    rule = "max_prob"
    stop_when = ">="
