"""`distree deploy`: run the distributed session as local processes, one per device, on loopback."""
from distree.errors import DistreeError
from distree.report import write_session_figures
from distree.runtime.config import add_serve_arguments, config_from_args
from distree.runtime.deploy import deploy
from distree.runtime.rank import check_options
from distree.runtime.summary import report_path
from distree.run_dir import read_config
from distree.samples import load_samples


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("deploy", help="serve a run with one local process per student device")
    p.add_argument("--devices", type=int,
                   help="student devices N; must be the run's number of students (default: that number)")
    p.add_argument("--timeout-s", type=float, default=0.0,
                   help="stop the whole session after this long, 0: never (default: %(default)s)")
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
        found = load_samples(config.run, count=config.sample_count(), images=config.images, warn=False)
        names = ", ".join(f"{f} ({why})" for f, why in found.skipped)
        skipped = f"; skipped {len(found.skipped)} that cannot be read: {names}" if names else ""
        print(f"classifying {len(found.files)} images from {config.images}{skipped}")
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
