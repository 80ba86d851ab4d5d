"""Input builders for the exit-gate tests (backends and x come from exit_head_cases)."""
import torch

import distree_kernels
from exit_head_cases import make_args

RULES = ("inverse_cos", "max_prob", "cos_previous", "gate")
# A threshold per rule inside the range its scores take on the random cases below.
THRESHOLDS = {"inverse_cos": 1.3, "max_prob": 0.3, "cos_previous": 0.1, "gate": 0.5}


def make_gate_args(B, C, H, W, K, bias, probabilities=True, layout="contiguous",
                   dtype=torch.float32, device="cpu", seed=0):
    """(x, weight, bias, first, previous, bias_share, gate_weight, gate_bias) for one case;
    K=None means no projection (feat is the pooled vector, K = C)."""
    x, w, b, first = make_args(B, C, H, W, K, bias, True, layout=layout, dtype=dtype, device=device,
                               seed=seed)
    width = first.shape[1]
    g = torch.Generator().manual_seed(seed + 2)
    previous = torch.randn(B, width, generator=g).to(device=device, dtype=dtype)  # (B, K)
    first = first - 0.3  # (B, K): some cosines <= 0
    bias_share = (0.5 * torch.randn(width, generator=g)).to(device)  # (K,)
    gate_weight = torch.randn(5 + (width if probabilities else 0), generator=g).to(device)  # (F,)
    gate_bias = (0.3 * torch.randn((), generator=g)).to(device)  # 0-d
    return x, w, b, first, previous, bias_share, gate_weight, gate_bias


def run_gate(backend, args, threshold, rule, inclusive=True):
    return distree_kernels.exit_gate(*args, threshold, rule, inclusive=inclusive, backend=backend)


def run_decide(backend, feat, args, threshold, rule, inclusive=True):
    """exit_gate_decide on the decision inputs of a make_gate_args tuple."""
    return distree_kernels.exit_gate_decide(feat, *args[3:], threshold, rule, inclusive=inclusive,
                                            backend=backend)
