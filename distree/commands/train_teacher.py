"""`distree train-teacher`: start a run directory from a preset and train its teacher (under torchrun: on K ranks)."""
from pathlib import Path

from distree.data import DATASETS
from distree.commands.training_options import add_launch_arguments, add_schedule_arguments, launch
from distree.errors import DistreeError
from distree.run_dir import TEACHER, read_config, write_config
from distree.training.presets import PRESETS, override, run_config
from distree.training.ranks import joined
from distree.training.shards import check_batch_size
from distree.training.teacher import train_teacher


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train-teacher", help="train the teacher of a new run directory (or resume it)")
    p.add_argument("--out", required=True, help="run directory to create (or, with --resume, to continue)")
    p.add_argument("--preset", choices=list(PRESETS), default="demo",
                   help="recipe for the whole run: %(choices)s (default %(default)s)")
    p.add_argument("--data", choices=DATASETS, help="dataset: %(choices)s (default: the preset's)")
    p.add_argument("--data-dir", help="folder of the dataset's files (default: the dataset's usual place); for "
                                      "--data folder: DIR holding train/CLASS/*.png|jpg|... and test/CLASS/...")
    p.add_argument("--image-size", type=int, help="side of the square images a folder is resized to, 8 to 512 "
                                                   "(default 32)")
    p.add_argument("--val-size", type=int, help="training images held out for validation (default: the preset's)")
    p.add_argument("--depth", type=int, help="teacher WRN depth, 6n + 4 (default: the preset's)")
    p.add_argument("--width", type=int, help="teacher WRN widening factor (default: the preset's)")
    add_schedule_arguments(p)
    p.add_argument("--seed", type=int, help="seed of the split and of training (default: the preset's)")
    add_launch_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint, "
                                                         "on any number of ranks (default: off)")
    p.set_defaults(func=run)


def run(args) -> int:
    job = launch(args)
    out = Path(args.out)
    changes = [args.data, args.data_dir, args.image_size, args.val_size, args.depth, args.width, args.epochs, args.lr,
               args.batch_size, args.seed]
    if args.resume:
        if any(v is not None for v in changes):
            raise DistreeError("--resume continues the run as configured in its config.json; drop the other options")
        config = read_config(out)
    else:
        if (out / TEACHER).exists():
            raise DistreeError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        config = run_config(args.preset)
        override(config["data"], name=args.data, data_dir=args.data_dir, image_size=args.image_size,
                 val_size=args.val_size, seed=args.seed)
        del config["data_shape"]  # the preset's dataset's; train_teacher records the data's own
        override(config["teacher"]["model"], depth=args.depth, width=args.width)
        override(config["teacher"]["optim"], epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                 seed=args.seed)
    check_batch_size(config["teacher"]["optim"]["batch_size"], job.ranks)
    if not args.resume:
        out.mkdir(parents=True, exist_ok=True)
        if job.ranks.main:
            write_config(out, config)
    with joined(job.ranks, job.device):
        history = train_teacher(out, config, args.resume, job.device, job.precision, job.ranks)
    if job.ranks.main:
        print(f"teacher test accuracy: {100 * history[-1]['test_acc']:.2f}%")
    return 0
