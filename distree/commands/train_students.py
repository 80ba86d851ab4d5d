"""`distree train-students`: jointly train the run's N students and aggregator against its teacher
(under torchrun: on K ranks)."""
import argparse
from pathlib import Path

from distree.commands.training_options import add_launch_arguments, add_schedule_arguments, launch
from distree.errors import DistreeError
from distree.models.student import EXIT_SPACES
from distree.training.partition import load_partition
from distree.run_dir import PARTITION, STUDENTS, read_config, write_config
from distree.training.presets import override
from distree.training.ranks import joined
from distree.training.shards import check_batch_size
from distree.training.students import train_students


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train-students", help="train the students of a partitioned run (or resume them)")
    p.add_argument("--run", required=True, help="run directory holding a teacher and its partition")
    p.add_argument("--students", type=int, help="number of students; must match partition.json (default: its)")
    p.add_argument("--width", type=int, help="student WRN-16 widening factor (default: the preset's)")
    p.add_argument("--exit-space", choices=EXIT_SPACES,
                   help="what exits send: %(choices)s; class evidence or projected features (default: the preset's)")
    p.add_argument("--head-backend", help="distree_kernels backend of the exit heads: auto, cpp, cuda, triton or "
                                          "reference (default: the preset's, auto)")
    add_schedule_arguments(p)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="augment training images (the teacher then runs at every step) (default: the preset's)")
    p.add_argument("--beta", type=float, help="weight of attention transfer (default: the preset's)")
    p.add_argument("--mixed-weight", type=float,
                   help="weight of the mixed-exit term, 0 for off (default: the preset's)")
    p.add_argument("--dropout", type=float, help="probability that a sample loses one student's feature, 0 to 1 "
                                                 "(default: the preset's)")
    p.add_argument("--failout", type=float, help="failout: probability that a sample loses each student's "
                                                 "feature, independently, never all of them, 0 to 1 (default: the "
                                                 "preset's)")
    p.add_argument("--seed", type=int, help="seed of training (default: the preset's)")
    add_launch_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint, on any number of "
                                                         "ranks (default: off)")
    p.set_defaults(func=run)


def run(args) -> int:
    job = launch(args)
    run_dir = Path(args.run)
    config = read_config(run_dir)
    students = config["students"]
    changes = {"model": dict(width=args.width, exit_space=args.exit_space, head_backend=args.head_backend),
               "optim": dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, augment=args.augment,
                             seed=args.seed),
               "loss": dict(beta=args.beta, mixed_weight=args.mixed_weight, dropout=args.dropout, failout=args.failout)}
    for option in ("dropout", "failout"):
        value = getattr(args, option)
        if value is not None and not 0 <= value <= 1:
            raise DistreeError(f"--{option} must be a probability in [0, 1], got {value:g}")
    n = len(load_partition(run_dir / PARTITION).groups)
    if args.students is not None and args.students != n:
        raise DistreeError(f"--students {args.students} does not match {run_dir / PARTITION}, which is for {n} "
                           f"students; rerun `distree partition --run {run_dir} --students {args.students}`")
    resuming = args.resume and (run_dir / STUDENTS).exists()
    if resuming:
        if any(v is not None for section in changes.values() for v in section.values()):
            raise DistreeError("--resume continues the students as configured; drop the other options")
    else:
        for key, values in changes.items():
            override(students[key], **values)
        students["num_students"] = n
    check_batch_size(students["optim"]["batch_size"], job.ranks)
    if job.ranks.main and not resuming:
        write_config(run_dir, config)
    with joined(job.ranks, job.device):
        history = train_students(run_dir, config, args.resume, job.device, job.precision, job.ranks)
    if not job.ranks.main:
        return 0
    accs = [history[-1][f"test_acc_exit{j}"] for j in range(1, 8)]
    print("test accuracy at exits 1..7 (all students at exit j): " + ", ".join(f"{100 * a:.2f}%" for a in accs))
    return 0
