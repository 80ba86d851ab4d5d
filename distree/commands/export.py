"""`distree export`: each student of a run as one ONNX file or AOTInductor package, exits inside."""
import time

from distree.errors import check_counts
from distree.export.conformance import check_export
from distree.export.run import FORMATS, export_run
from distree.plan import add_plan_arguments, parse_thresholds
from distree.policies import POLICIES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export each student as one artifact that stops at its own exit "
                                             "(ONNX or AOTInductor), with manifest.json")
    p.add_argument("--run", required=True, help="run directory with trained students (students.pt)")
    p.add_argument("--format", required=True, metavar="|".join(FORMATS), help="onnx (ONNX Runtime) or pt2 "
                                                                             "(AOTInductor package)")
    p.add_argument("--out", help="output folder; an earlier export there is replaced, any other non-empty folder "
                                 "refused (default: RUN/export-FORMAT)")
    exportable = [n for n, cls in POLICIES.items() if getattr(cls, "rule", None)] + ["last-exit"]
    p.add_argument("--policy", help=f"local exit policy baked in: {', '.join(exportable)} (default: distree)")
    add_plan_arguments(p, "bake in")
    p.add_argument("--check", action="store_true", help="run every artifact against the PyTorch engine")
    p.add_argument("--samples", type=int, default=1000, help="test samples --check compares on (default: %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    check_counts(samples=args.samples)
    start = time.perf_counter()
    out, manifest = export_run(args.run, args.format, args.out, args.policy, parse_thresholds(args.thresholds),
                               args.setting)
    print(f"wrote {len(manifest['students'])} {args.format} students and {out / 'manifest.json'} "
          f"(policy {manifest['policy']}, {manifest['setting']} thresholds) in {time.perf_counter() - start:.1f} s")
    if args.check:
        start = time.perf_counter()
        result = check_export(out, args.samples)
        print(f"conformance: {result.samples} samples, exits identical, class evidence within "
              f"{result.max_abs_evidence_error:.2g} of the engine's, predictions identical "
              f"(accuracy {100 * result.accuracy:.2f}%), in {time.perf_counter() - start:.1f} s")
        for i, counts in enumerate(result.exit_histogram):
            print(f"  student {i} exits 1..7: {counts}")
        if result.moved_thresholds is not None:
            print(f"  and the same with thresholds {[round(t, 4) for t in result.moved_thresholds]} fed in "
                  "(each exit's lower-quartile score, as the runtime may move a device to another setting):")
            for i, counts in enumerate(result.moved_exit_histogram):
                print(f"  student {i} exits 1..7: {counts}")
    return 0
