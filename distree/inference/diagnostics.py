"""What the report's numbers mean: can a score tell good exits from bad, and what could be saved."""
import torch

from distree.costs import FlopTable, flops_per_sample
from distree.inference.evidence import Evidence
from distree.policies import ConfidencePolicy, PerExitPolicy, Policy
from distree.policies.learned_gate import unchanged_answer


def flops_saved(flops: FlopTable, exits: torch.Tensor, policy: Policy) -> float:
    """The fraction of last-exit FLOPs a policy's exits (N, B) save on average."""
    return 1 - flops_per_sample(flops, exits, policy).mean().item() / flops.last_exit()


def auroc(score: torch.Tensor, positive: torch.Tensor) -> float | None:
    """P(a positive scores above a negative), ties counting half; NaN scores are left out.

    None when one class is empty (the question has no answer)."""
    keep = ~score.isnan()
    s, y = score[keep].double(), positive[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = s.unique(return_inverse=True, return_counts=True)
    mid_rank = counts.cumsum(0) - (counts - 1) / 2  # average rank of each distinct value
    ranks = mid_rank[inverse]
    return ((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def score_aurocs(policy: Policy, scores: torch.Tensor, ev: Evidence) -> list[float]:
    """Per exit 2..6: how well the score tells exits that keep exit 7's answer from those that don't.

    Local policies: student i alone at exit j (others at 7), pooled over students; per-exit
    policies: all students at j. Oriented so that 0.5 is chance and 1 is perfect.
    """
    if isinstance(policy, PerExitPolicy):
        logits = ev.exit_logits()  # (7, B, K)
        same = (logits.argmax(-1) == logits[-1].argmax(-1)).unsqueeze(0).expand(scores.shape[0], -1, -1)
    else:
        same = unchanged_answer(ev.u, ev.aggregate)  # (N, 7, B)
    sign = 1.0 if policy.never > 0 else -1.0  # scores that stop when low are flipped
    return [auroc(sign * scores[:, j].flatten(), same[:, j + 1].flatten()) for j in range(scores.shape[1])]


def oracle(ev: Evidence, flops: FlopTable) -> dict:
    """The first exit j >= 2 where all students at j give exit 7's answer: the savings that exist."""
    logits = ev.exit_logits()  # (7, B, K)
    same = logits.argmax(-1) == logits[-1].argmax(-1)  # (7, B)
    exits = same[1:].int().argmax(0) + 1  # (B,): exit 7 always agrees with itself
    exits = exits.expand(ev.u.shape[0], -1)  # (N, B)
    right = ev.answers(exits) == ev.labels
    # counted like a per-exit policy: every head up to the exit, the aggregator at every decision
    return {"accuracy": right.float().mean().item(), "flops_reduction": flops_saved(flops, exits, ConfidencePolicy())}
