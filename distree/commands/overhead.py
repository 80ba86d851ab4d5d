"""`distree overhead`: parameters, FLOPs and training time of the 6 added exits."""
from pathlib import Path

from distree.errors import DistreeError
from distree.run_dir import read_config
from distree.training.overhead import exit_params_and_flops, exit_step_time


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("overhead", help="cost of the added exits: parameters, FLOPs, training time")
    p.add_argument("--run",
                   help="run directory whose students to measure (default: 2 WRN-16-1 students, 1 channel, 10 classes)")
    p.add_argument("--batch-size", type=int, default=128, help="images per timed training step (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed training steps per setting; the median is reported (default: %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    if min(args.batch_size, args.repeats) < 1:
        raise DistreeError(f"--batch-size and --repeats must be 1 or more, got {args.batch_size} and {args.repeats}")
    shape, n, width = {"num_classes": 10, "in_channels": 1}, 2, 1
    if args.run:
        config = read_config(Path(args.run))
        shape, n, width = config["data_shape"], config["students"]["num_students"], config["students"]["model"]["width"]
    cost = exit_params_and_flops(shape["num_classes"], shape["in_channels"], width)
    print(f"6 added exits of a WRN-16-{width} student: {cost['exit_params']} of {cost['student_params']} parameters "
          f"({cost['exit_params_percent']:.2f}%), {cost['exit_flops']} of {cost['student_flops']} FLOPs "
          f"({cost['exit_flops_percent']:.4f}%)")
    times = exit_step_time(n, shape["num_classes"], shape["in_channels"], width, args.batch_size, args.repeats)
    for backend, t in times.items():
        print(f"training step of {n} students, {backend} heads: {1e3 * t['all_exits_s']:.1f} ms with 7 exits, "
              f"{1e3 * t['last_exit_s']:.1f} ms with the last only (+{t['exit_cost_percent']:.1f}%)")
    return 0
