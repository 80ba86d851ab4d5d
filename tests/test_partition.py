"""The NoNN partition: graph weights by hand, balancing, planted communities, the saved file."""
import json

import pytest
import torch

from distree.errors import DistreeError
from distree.training.partition import (Partition, PartitionConfig, activation_graph, balance, filter_activations,
                               load_partition, make_partition, save_partition)


def test_filter_activations_by_hand():
    maps = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]], [[-1.0, -1.0]]]])  # (1, 3, 1, 2)
    assert torch.equal(filter_activations(maps), torch.tensor([[1.0, 0.5, 0.0]]))


def test_activation_graph_by_hand():
    a = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.5]])
    W = activation_graph(a, top_k=2)  # image 1 links (0, 1), image 2 links (1, 2), each 1 * 0.5 * 0.5
    expected = torch.tensor([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]], dtype=torch.float64)
    assert torch.equal(W, expected)


def test_balance_keeps_communities_whole_when_they_fit():
    assert balance([[0, 1, 2, 3, 4], [5, 6]], 10, 2) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_balance_splits_a_community_that_overflows():
    groups = balance([[0, 1, 2, 3, 4, 5, 6]], 10, 3)
    assert [len(g) for g in groups] == [4, 3, 3] and groups[0] == [0, 1, 2, 3]
    assert sorted(sum(groups, [])) == list(range(10))


def planted(C: int = 16, M: int = 400) -> torch.Tensor:
    """Activations of two groups of filters (0..7 and 8..15) that never fire together."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(M, C, generator=g) * 0.01
    a[: M // 2, : C // 2] += torch.rand(M // 2, C // 2, generator=g)
    a[M // 2:, C // 2:] += torch.rand(M // 2, C // 2, generator=g)
    return a / a.amax(1, keepdim=True)


def test_louvain_finds_planted_communities():
    p = make_partition(planted(), 2, PartitionConfig(top_k=8, keep_edges=1.0))
    assert sorted(map(tuple, p.groups)) == [tuple(range(8)), tuple(range(8, 16))]
    assert p.modularity > 0.3 and p.num_communities >= 2


@pytest.mark.parametrize("n", range(1, 9))
def test_every_filter_assigned_for_any_n(n):
    p = make_partition(planted(), n, PartitionConfig(top_k=8, keep_edges=0.05))
    assert sorted(sum(p.groups, [])) == list(range(16))
    assert max(p.sizes) - min(p.sizes) <= 1


def test_more_students_than_filters():
    with pytest.raises(DistreeError, match="cannot split"):
        make_partition(planted(), 17, PartitionConfig())


def test_saved_partition_is_readable_and_checked(tmp_path):
    path = tmp_path / "partition.json"
    p = Partition([[0, 2], [1, 3]], 4, 0.25, 2)
    save_partition(p, path)
    body = json.loads(path.read_text())
    assert body["sizes"] == [2, 2] and body["groups"] == [[0, 2], [1, 3]] and body["modularity"] == 0.25
    assert load_partition(path, 4, 2) == p
    with pytest.raises(DistreeError, match="final group has 8"):
        load_partition(path, num_filters=8)
    with pytest.raises(DistreeError, match="for 2 students, not 3"):
        load_partition(path, num_students=3)
    path.write_text(json.dumps({**body, "groups": [[0, 2], [1, 2]]}))
    with pytest.raises(DistreeError, match="does not split"):
        load_partition(path)
    path.write_text("{ not json")
    with pytest.raises(DistreeError, match="corrupt partition"):
        load_partition(path)
    with pytest.raises(DistreeError, match="distree partition"):
        load_partition(tmp_path / "missing.json")
