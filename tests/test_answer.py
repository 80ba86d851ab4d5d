"""The aggregator's numpy logits against the torch aggregators they stand for: every set of devices
that may answer, with and without a surviving-set table, in both exit spaces."""
import itertools

import pytest
import torch

from distree.models.surviving_sets import SetAggregator, SurvivingSets, aggregator_for, proper_subsets
from distree.runtime.answer import Answers
from test_surviving_sets import tiny_model

N = 3


def table(n: int, k: int) -> SurvivingSets:
    """Fitted-looking scales (some below 0, so zeros carry signs) and biases for every proper subset."""
    g = torch.Generator().manual_seed(1)
    return SurvivingSets(n, {s: SetAggregator(s, torch.randn(len(s), generator=g) * 1.5, torch.randn(k, generator=g))
                             for s in proper_subsets(n)})


@pytest.mark.parametrize("exit_space", ["class", "projected"])
@pytest.mark.parametrize("with_table", [True, False])
def test_numpy_logits_are_the_torch_aggregators(exit_space, with_table):
    model = tiny_model(N, exit_space)
    dim, k = model.students[0].heads[0].weight.shape[0], model.bias.shape[0]
    surviving = table(N, k) if with_table else None
    answers = Answers(model, surviving)
    torch.manual_seed(2)
    u = torch.randn(200, N, dim) * 3  # 200 samples' evidence
    for size in range(N + 1):
        for members in itertools.combinations(range(N), size):
            for sample in u:
                got = answers.logits({i: sample[i].numpy() for i in members})  # (K,)
                u_sel = torch.zeros(N, 1, dim)  # (N, 1, D): the aggregator's input, rows of the silent zeroed
                u_sel[list(members), 0] = sample[list(members)]
                with torch.no_grad():
                    want = (aggregator_for(model, surviving, members)(u_sel) if members else model.aggregate(u_sel))[0]
                if exit_space == "class":  # bit for bit: the same products and the same order of sums
                    assert torch.equal(torch.from_numpy(got), want), (members, got, want)
                else:  # torch sums the projection's columns in its own order
                    assert torch.allclose(torch.from_numpy(got), want, rtol=1e-5, atol=1e-5), (members, got, want)
