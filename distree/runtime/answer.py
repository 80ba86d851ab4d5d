"""The aggregator's logits for one sample, computed in numpy from the evidence the devices sent.

Every aggregator a session may answer with is affine in the evidence: the healthy one, a
surviving set's (`distree.models.surviving_sets`) and, for a run without that table, the healthy
one with the missing rows zeroed. So for each set S of devices that answered,

    z = sum over i in S, in order, of scale_S[i] * C_i @ u_i, then + bias_S

with C_i (K, D) what student i's evidence adds to the logits (`model.contributions`: the identity
in the class space, student i's columns of the projection in the projected space). In the class
space C_i is the identity, so every term is exactly scale_S[i] * u_i and the sum runs in torch's
order: the logits are torch's bit for bit. In the projected space they agree up to rounding.

Why not torch: in the aggregator's process every torch op releases the GIL, which its receiving
and sending threads then take; in a session an answer through torch took 0.15-0.17 ms at the
median against 0.03 ms through numpy (benches/README.md).
"""
from dataclasses import dataclass

import numpy as np
import torch

from distree.models.surviving_sets import SurvivingSets


@dataclass
class SetMap:
    """The affine map of one set of devices: z = sum_i weights[i] @ u_i + bias."""

    weights: np.ndarray  # (|S|, K, D), in the order of the sorted members
    bias: np.ndarray  # (K,)


class Answers:
    """The logits of `model`'s aggregator for whichever devices answered; `surviving`: the run's table or None."""

    def __init__(self, model, surviving: SurvivingSets | None):
        n, dim = len(model.students), model.students[0].heads[0].weight.shape[0]
        basis = torch.eye(dim).expand(n, dim, dim)  # (N, D, D): sample b is the unit vector e_b
        with torch.no_grad():
            self.contribution = model.contributions(basis).transpose(1, 2).numpy().copy()  # (N, K, D): C_i
            self.bias = model.bias.detach().numpy().copy()  # (K,)
        self.n, self.surviving, self.maps = n, surviving, {}

    def logits(self, evidence: dict) -> np.ndarray:
        """z (K,) float32 from {device: u (D,) float32}."""
        members = tuple(sorted(evidence))
        if members not in self.maps:
            self.maps[members] = self._map(members)
        at = self.maps[members]
        z = None
        for w, i in zip(at.weights, members):
            term = w @ evidence[i]  # (K,)
            z = term if z is None else z + term
        return at.bias.copy() if z is None else z + at.bias

    def _map(self, members: tuple) -> SetMap:
        """The weights and bias of the set that answered: the healthy aggregator for every device or none (the
        bias alone), a fitted one for a proper subset where the run has the table, else the healthy one's rows."""
        scale, bias = np.ones(len(members), np.float32), self.bias
        if self.surviving is not None and 0 < len(members) < self.n:
            fitted = self.surviving.sets[members]
            scale, bias = fitted.scale.numpy(), fitted.bias.numpy()
        weights = scale[:, None, None] * self.contribution[list(members)]  # (|S|, K, D)
        return SetMap(weights.astype(np.float32), bias.astype(np.float32))
