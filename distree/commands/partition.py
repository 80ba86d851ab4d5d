"""`distree partition`: split the trained teacher's final-group filters over N students (NoNN)."""
from pathlib import Path

from distree.errors import DistreeError
from distree.training.partition import partition_run
from distree.run_dir import PARTITION, STUDENTS, read_config, write_config
from distree.training.presets import override
from distree.training.ranks import launched_ranks


RUNS = "(default: the run's config.json, from its preset)"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("partition", help="partition the teacher's filters over the students")
    p.add_argument("--run", required=True, help="run directory holding a trained teacher")
    p.add_argument("--students", type=int,
                   help="number of students N, 1 to 8 " + RUNS)
    p.add_argument("--max-images", type=int,
                   help="training images the activation graph is built from " + RUNS)
    p.add_argument("--top-k", type=int,
                   help="filters per image that add edges " + RUNS)
    p.add_argument("--keep-edges", type=float,
                   help="share of the strongest edges kept, in (0, 1] " + RUNS)
    p.add_argument("--resolution", type=float,
                   help="Louvain resolution; higher gives more, smaller communities " + RUNS)
    p.add_argument("--seed", type=int, help="Louvain seed " + RUNS)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    if not launched_ranks().main:  # under torchrun rank 0 alone partitions; the others read partition.json later
        return 0
    run_dir = Path(args.run)
    config = read_config(run_dir)
    if (run_dir / STUDENTS).exists():
        raise DistreeError(f"{run_dir / STUDENTS} was trained on the current {PARTITION}; "
                           "delete it first to partition again")
    if args.students is not None and not 1 <= args.students <= 8:
        raise DistreeError(f"--students must be between 1 and 8, got {args.students}")
    override(config["partition"], max_images=args.max_images, top_k=args.top_k, keep_edges=args.keep_edges,
             resolution=args.resolution, seed=args.seed)
    override(config["students"], num_students=args.students)
    p = partition_run(run_dir, config, args.device)
    write_config(run_dir, config)
    print(f"partition of {p.num_filters} filters into {len(p.groups)} students: sizes {p.sizes}, "
          f"{p.num_communities} communities, modularity {p.modularity:.3f} -> {run_dir / PARTITION}")
    return 0
