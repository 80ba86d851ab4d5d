"""DistrEE's rule: stop once the representation has moved far enough from the first exit's."""
from distree.policies.base import LocalInputs, LocalPolicy


class DistreePolicy(LocalPolicy):
    """Stop at the first j >= 2 with 1 / cos(u_j, u_1) > T_j (docs/method.md, "Exit decisions").

    The fused exit head computes this score on the device in the same pass as the feature,
    so the policy only reads it back; a cos <= 0 scores +inf and a NaN never stops.
    """

    name = "distree"
    stop_when = ">"

    def score(self, x: LocalInputs):
        return x.head_score  # (B,)
