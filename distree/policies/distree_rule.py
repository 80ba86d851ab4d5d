"""DistrEE's rule: stop once the representation has moved far enough from the first exit's."""
from distree.policies.base import LocalPolicy


class DistreePolicy(LocalPolicy):
    """Stop at the first j >= 2 with 1 / cos(u_j, u_1) > T_j (docs/method.md, "Exit decisions").

    The fused exit gate scores this on the device in the same pass as the feature; a cos <= 0
    scores +inf, a zero vector 1, and a NaN never stops.
    """

    name = "distree"
    rule = "inverse_cos"
    stop_when = ">"
