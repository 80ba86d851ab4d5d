"""`distree deploy`: run the distributed session as local processes, one per device, on loopback."""
from distree.errors import DistreeError
from distree.report import write_session_figures
from distree.runtime.config import add_serve_arguments, config_from_args
from distree.runtime.deploy import deploy
from distree.runtime.inputs import count_images
from distree.runtime.rank import check_options
from distree.runtime.summary import report_path
from distree.run_dir import read_config


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("deploy", help="serve a run with one local process per student device")
    p.add_argument("--devices", type=int, help="student devices N (default: the run's number of students)")
    p.add_argument("--timeout-s", type=float, default=0.0, help="stop the whole session after this long (0: never)")
    add_serve_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    students = read_config(args.run)["students"]["num_students"]
    devices = students if args.devices is None else args.devices
    if devices != students:
        raise DistreeError(f"the run has {students} students, so it needs --devices {students}, not {devices}")
    config = config_from_args(args)
    check_options(config, devices)
    if config.images is not None:  # before any process starts: a folder with nothing readable is an error here
        readable, skipped = count_images(config.run, config.images, config.samples)
        print(f"classifying {readable} images from {config.images}; skipped {skipped} that cannot be read")
    outcome = deploy(config, devices, timeout_s=args.timeout_s)
    if outcome.codes[0] == 0 and 0 not in outcome.killed and config.adapting:
        for path in write_session_figures(report_path(config)):
            print(f"figure: {path}")
    for rank, code in enumerate(outcome.codes):
        role = "aggregator" if rank == 0 else f"device {rank - 1}"
        if rank in outcome.killed:
            print(f"{role} was still running and was stopped")
        elif code:
            print(f"{role} exited with {f'signal {-code}' if code < 0 else f'code {code}'}")
    return 0 if outcome.codes[0] == 0 and 0 not in outcome.killed else 1
