"""NoNN's partition of the teacher's final-group filters into N disjoint parts, one per student.

Bhardwaj, Suda, Marculescu, "Memory- and Communication-Aware Model Compression for Distributed
Deep Learning Inference on IoT" (2019): filters that fire strongly, together and unequally
on the same images are linked in an activation graph; Louvain finds its communities, which
are then balanced over the students.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import torch

from distree.data import forward_batch
from distree.errors import DistreeError
from distree.run_dir import PARTITION, config_from_dict, load_teacher, run_splits


@dataclass
class PartitionConfig:
    max_images: int = 10000  # training images the graph is built from
    top_k: int = 50  # filters per image that add edges
    keep_edges: float = 0.01  # share of the graph's edges kept, strongest first
    resolution: float = 0.7  # Louvain resolution
    seed: int = 0  # Louvain seed


@dataclass
class Partition:
    groups: list[list[int]]  # filter indices of each student, sorted
    num_filters: int
    modularity: float  # of the Louvain communities on the kept graph
    num_communities: int

    @property
    def sizes(self) -> list[int]:
        return [len(g) for g in self.groups]


def filter_activations(maps: torch.Tensor) -> torch.Tensor:
    """a (B, C) in [0, 1]: each filter's pooled activation, clipped at 0, over the image's maximum."""
    a = maps.mean((2, 3)).clamp(min=0)  # (B, C)
    return a / a.amax(1, keepdim=True).clamp(min=1e-12)


def activation_graph(a: torch.Tensor, top_k: int) -> torch.Tensor:
    """Edge weights W (C, C): sum over images of a_j a_k |a_j - a_k| among each image's top-k filters."""
    B, C = a.shape
    v, idx = a.topk(min(top_k, C), dim=1)  # (B, k), (B, k)
    w = v[:, :, None] * v[:, None, :] * (v[:, :, None] - v[:, None, :]).abs()  # (B, k, k)
    pairs = idx[:, :, None] * C + idx[:, None, :]  # (B, k, k): flat index of edge (j, k)
    W = torch.zeros(C * C, dtype=torch.float64).index_add_(0, pairs.flatten(), w.flatten().double())
    return W.view(C, C)  # symmetric, zero diagonal


def communities(W: torch.Tensor, keep: float, resolution: float, seed: int) -> tuple[list[list[int]], float]:
    """Louvain communities of the graph of the strongest `keep` share of edges, and their modularity."""
    W = W / W.max().clamp(min=1e-300)  # normalised weights
    j, k = torch.triu_indices(*W.shape, offset=1)
    w = W[j, k]  # (C(C-1)/2,)
    nonzero = (w > 0).nonzero().flatten()
    kept = nonzero[w[nonzero].argsort(descending=True, stable=True)[:max(1, math.ceil(keep * len(nonzero)))]]
    graph = nx.Graph()
    graph.add_weighted_edges_from((int(j[e]), int(k[e]), float(w[e])) for e in kept)
    if graph.number_of_edges() == 0:
        return [], 0.0
    found = nx.community.louvain_communities(graph, weight="weight", resolution=resolution, seed=seed)
    found = [sorted(c) for c in found]
    return found, nx.community.modularity(graph, found, weight="weight")


def balance(found: list[list[int]], num_filters: int, n: int) -> list[list[int]]:
    """Gives every filter to one of n students, sizes floor or ceil of num_filters / n.

    Communities go largest first to the student with the most room left; one that does not fit
    is split and its rest queued again. Filters outside every community go last, to the
    students with the most room.
    """
    room = [num_filters // n + (i < num_filters % n) for i in range(n)]  # target sizes, summing to num_filters
    groups = [[] for _ in range(n)]
    queue = sorted(found, key=len, reverse=True)
    placed = {f for c in found for f in c}
    queue += [[f] for f in range(num_filters) if f not in placed]  # isolated filters
    while queue:
        community = queue.pop(0)
        i = max(range(n), key=lambda s: room[s])
        take, rest = community[:room[i]], community[room[i]:]
        groups[i] += take
        room[i] -= len(take)
        if rest:
            queue.insert(sum(len(c) >= len(rest) for c in queue), rest)
    return [sorted(g) for g in groups]


def make_partition(a: torch.Tensor, n: int, cfg: PartitionConfig) -> Partition:
    """The partition of C filters over n students from activations a (M, C) of M images."""
    C = a.shape[1]
    if not 1 <= n <= C:
        raise DistreeError(f"cannot split {C} teacher filters over {n} students")
    found, modularity = communities(activation_graph(a, cfg.top_k), cfg.keep_edges, cfg.resolution, cfg.seed)
    return Partition(balance(found, C, n), C, modularity, len(found))


def save_partition(p: Partition, path: Path) -> None:
    """Writes the partition as readable JSON (one student's filters per line), atomically."""
    fields = {"num_students": len(p.groups), "num_filters": p.num_filters, "sizes": p.sizes,
              "modularity": p.modularity, "num_communities": p.num_communities}
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in fields.items()]
    groups = ",\n".join(f"    {json.dumps(g)}" for g in p.groups)
    text = "{\n" + "\n".join(lines) + f'\n  "groups": [\n{groups}\n  ]\n}}\n'
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def load_partition(path: Path, num_filters: int = None, num_students: int = None) -> Partition:
    """Reads and checks a partition: disjoint groups covering every filter, matching the teacher and N."""
    try:
        body = json.loads(Path(path).read_text())
        p = Partition([list(map(int, g)) for g in body["groups"]], int(body["num_filters"]),
                      float(body["modularity"]), int(body["num_communities"]))
    except FileNotFoundError:
        raise DistreeError(f"no partition at {path}; run `distree partition` first") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DistreeError(f"corrupt partition {path}: {err!r}") from None
    if sorted(f for g in p.groups for f in g) != list(range(p.num_filters)) or not all(p.groups):
        raise DistreeError(f"partition {path} does not split filters 0..{p.num_filters - 1} into non-empty parts")
    if num_filters is not None and p.num_filters != num_filters:
        raise DistreeError(f"partition {path} splits {p.num_filters} filters but the teacher's final group has "
                           f"{num_filters}; rerun `distree partition`")
    if num_students is not None and len(p.groups) != num_students:
        raise DistreeError(f"partition {path} is for {len(p.groups)} students, not {num_students}; "
                           f"rerun `distree partition --students {num_students}`")
    return p


@torch.no_grad()
def teacher_activations(teacher, dataset, max_images: int, device="cpu") -> torch.Tensor:
    """a (M, C) of the first max_images images of a split (the training split is already shuffled)."""
    out = []
    for idx in torch.arange(min(max_images, len(dataset))).split(forward_batch(device)):
        x, _ = dataset.batch(idx)
        out.append(filter_activations(teacher.features(x.to(device).contiguous(memory_format=torch.channels_last))))
    return torch.cat(out).cpu()


def partition_run(run_dir, config: dict, device="cpu") -> Partition:
    """Partitions the run's trained teacher over config's number of students; writes partition.json."""
    cfg = config_from_dict(PartitionConfig, config["partition"])
    teacher = load_teacher(run_dir).to(device)
    data = run_splits(run_dir, config)
    a = teacher_activations(teacher, data.train, cfg.max_images, device)
    p = make_partition(a, config["students"]["num_students"], cfg)
    save_partition(p, Path(run_dir) / PARTITION)
    return p
