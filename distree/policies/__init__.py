"""Exit policies behind one interface (`base.Policy`); adding one is one small class here."""
from distree.errors import DistreeError
from distree.models.student import LAST_EXIT, NUM_EXITS
from distree.policies.base import (NUM_THRESHOLDS, LocalInputs, LocalPolicy, PerExitPolicy, Policy,
                                  check_thresholds)
from distree.policies.confidence import ConfidencePolicy
from distree.policies.distree_rule import DistreePolicy
from distree.policies.entropy import EntropyPolicy
from distree.policies.last_exit import LastExitPolicy
from distree.policies.learned_gate import LearnedGatePolicy
from distree.policies.local_confidence import LocalConfidencePolicy
from distree.policies.random_exit import RandomPolicy
from distree.policies.similarity import SimilarityPolicy

POLICIES = {
    cls.name: cls
    for cls in (
        DistreePolicy,
        SimilarityPolicy,
        LocalConfidencePolicy,
        LearnedGatePolicy,
        RandomPolicy,
        LastExitPolicy,
        ConfidencePolicy,
        EntropyPolicy,
    )
}


def make_policy(name: str, **kwargs) -> Policy:
    """The policy called `name`; learned-gate needs its fitted state as keyword arguments."""
    if name not in POLICIES:
        raise DistreeError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return POLICIES[name](**kwargs)


__all__ = [
    "LAST_EXIT",
    "NUM_EXITS",
    "NUM_THRESHOLDS",
    "POLICIES",
    "ConfidencePolicy",
    "DistreePolicy",
    "EntropyPolicy",
    "LastExitPolicy",
    "LearnedGatePolicy",
    "LocalConfidencePolicy",
    "LocalInputs",
    "LocalPolicy",
    "PerExitPolicy",
    "Policy",
    "RandomPolicy",
    "SimilarityPolicy",
    "check_thresholds",
    "make_policy",
]
