"""The serving options, shared by `python -m distree.serve` (under torchrun) and `distree deploy`."""
import argparse
from dataclasses import dataclass, field

from distree.plan import DEFAULT_POLICIES, add_plan_arguments
from distree.policies import POLICIES

DEVICE_BACKENDS = ("torch", "onnxruntime")
FAULT_HELP = ("KIND:TARGET@AT[:ARGS], TARGET a device index or agg (the aggregator), AT the inputs the device has "
              "received (the answers the aggregator has given) before it strikes: kill:D@AT (SIGKILL), freeze:D@AT "
              "(SIGSTOP), stall:D@AT:SECONDS (sleep before one answer), corrupt:D@AT (a malformed answer), "
              "slow:D@AT:FACTOR[:SECONDS] (compute FACTOR x slower, for SECONDS or to the end), "
              "link:D@AT:DELAY_MS[:MBPS] (the link's new delay and bandwidth); the aggregator: kill:agg@AT, "
              "freeze:agg@AT, corrupt:agg@AT (a bad THRESHOLDS message). See distree/runtime/faults.py")
SPLIT_SAMPLES = 500  # samples of a split served unless --samples says otherwise


@dataclass
class ServeConfig:
    run: str
    split: str = "test"
    samples: int = None  # None: SPLIT_SAMPLES of a split, every file of --images; 0: all
    images: str = None  # a folder of images instead of the split
    predictions: str = None  # --images: the per-file CSV (default predictions.csv beside the report)
    policies: list = field(default_factory=lambda: list(DEFAULT_POLICIES))
    thresholds: list = field(default_factory=list)  # POLICY=T or POLICY=T2,...,T6; else the run's setting
    setting: str = None  # the run's setting served (distree.run_settings); None: calibrated
    window: int = 2  # samples in flight under local policies (1: no pipelining)
    chunk: int = 50  # samples per policy per turn: policies take turns, so they meet the same machine load
    deadline_ms: float = 0.0  # 0: deadline_factor x the recent median latency
    deadline_factor: float = 4.0
    dead_after_s: float = 5.0  # heartbeat silence that declares a rank lost
    link_delay_ms: str = "0"  # one value, or one per device, comma-separated
    link_mbps: str = "0"  # 0: unlimited
    link_jitter_ms: str = "0"
    faults: list = field(default_factory=list)  # KIND:TARGET@AT[:SECONDS], see runtime/faults.py
    reference_samples: int = 100  # samples timed in one process for comparison (0: none)
    warmup: int = 2  # answers per policy left out of the latency figures
    threads: int = 1  # torch threads per process
    cpus: str = None  # per rank, the CPUs it runs on (runtime/pinning.py); None: wherever the kernel puts it
    device_backend: str = "torch"  # or onnxruntime: the devices serve exported ONNX students (artifacts)
    artifacts: str = None  # the `distree export --format onnx` folder onnxruntime devices serve
    backend: str = "auto"  # gloo, nccl or auto (NCCL when every rank has a GPU)
    connect_timeout_s: float = 60.0
    report: str = None  # default RUN/distributed.json
    latency_target_ms: float = None  # None: static thresholds; else adapt each device (runtime/adaptive.py)
    latency_target_x: float = None  # instead: the target is this x the median of the first healthy answers
    percentile: float = 95.0  # of the latency held under the target
    shadow_fraction: float = 0.02  # of samples also run to exit 7 on every device, under a target
    threshold_path: str = None  # JSON {"POLICY": [[T2..T6], ...] or a grid}; default: the run's certified grid
    path_steps: int = 8  # settings of a given list used, at most (evenly spaced, ends kept)
    adapt_window: int = 30  # recent answers per device the controller looks at
    consistency_epsilon: float = 0.01  # the shadow check's epsilon for a given list, which certifies nothing
    timeline_window: int = 50  # samples per row of the report's timeline
    trace: str = None  # a folder: every rank writes its marks there (runtime/trace.py); None: no marks

    def sample_count(self) -> int:
        """Samples to serve (0: all): --samples, else SPLIT_SAMPLES of a split and every image file of a folder."""
        return self.samples if self.samples is not None else 0 if self.images else SPLIT_SAMPLES

    @property
    def adapting(self) -> bool:
        """Whether the thresholds follow a latency target (runtime/adaptive.py)."""
        return self.latency_target_ms is not None or self.latency_target_x is not None


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    d = ServeConfig(run="")
    D = " (default: %(default)s)"
    p.add_argument("--run", required=True, help="run directory with trained students (students.pt)")
    p.add_argument("--split", default=d.split, choices=("val", "test"),
                   help="the run's split to serve without --images: %(choices)s" + D)
    p.add_argument("--samples", type=int, default=None,
                   help=f"samples to serve: the first S of the split (default {SPLIT_SAMPLES}) or of the --images "
                        "files by path (default: every file); 0: all")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="a folder of image files to classify instead of the split (default: none), prepared by "
                        "the run's recorded preprocessing; answers per file in --predictions")
    p.add_argument("--predictions", default=None, metavar="FILE",
                   help="with --images: the per-file CSV (default predictions.csv beside --report); a file there is "
                        "replaced only if distree wrote it")
    p.add_argument("--policies", default=",".join(d.policies),
                   help=f"exit policies to serve, comma-separated, run in this order; of {', '.join(POLICIES)}" + D)
    add_plan_arguments(p, "serve")
    p.add_argument("--window", type=int, default=d.window, help="samples in flight, 1: one at a time" + D)
    p.add_argument("--chunk", type=int, default=d.chunk,
                   help="samples per policy per turn; policies take turns so that they see the same load" + D)
    p.add_argument("--deadline-ms", type=float, default=d.deadline_ms,
                   help="how long to wait for a device per sample, 0: adaptive (--deadline-factor)" + D)
    p.add_argument("--deadline-factor", type=float, default=d.deadline_factor,
                   help="adaptive deadline = this x the median latency of recent complete answers" + D)
    p.add_argument("--dead-after-s", type=float, default=d.dead_after_s,
                   help="heartbeat silence after which a rank is declared lost" + D)
    p.add_argument("--link-delay-ms", default=d.link_delay_ms,
                   help="emulated per-message delay: one value, or one per device comma-separated" + D)
    p.add_argument("--link-mbps", default=d.link_mbps,
                   help="emulated bandwidth, one value or one per device, 0: unlimited" + D)
    p.add_argument("--link-jitter-ms", default=d.link_jitter_ms,
                   help="emulated delay jitter, one value or one per device" + D)
    p.add_argument("--fault", dest="faults", action="append", default=[], metavar="KIND:TARGET@AT[:ARGS]",
                   help="inject a fault, repeatable (default: none). " + FAULT_HELP)
    p.add_argument("--reference-samples", type=int, default=d.reference_samples,
                   help="samples also timed in one process, for comparison, 0: none" + D)
    p.add_argument("--warmup", type=int, default=d.warmup, help="answers per policy left out of latency figures" + D)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads per process" + D)
    p.add_argument("--cpus", default=None, metavar="LIST",
                   help="pin each rank to CPUs: one entry per rank, aggregator first, comma-separated, several CPUs "
                        "joined by '+' (e.g. 0,1 for one device; 0,1,1 or 0,0+1,1 for two) (default: no pinning)")
    p.add_argument("--backend", default=d.backend, choices=("auto", "gloo", "nccl"),
                   help="torch.distributed backend: %(choices)s; auto is NCCL when every rank has a GPU, else gloo" + D)
    p.add_argument("--device-backend", default=d.device_backend, choices=DEVICE_BACKENDS,
                   help="what each device computes with: torch (its PyTorch student) or onnxruntime (its exported "
                        "ONNX file, with --artifacts)" + D)
    p.add_argument("--artifacts", default=None,
                   help="the `distree export --format onnx` folder onnxruntime devices serve (default: none)")
    p.add_argument("--connect-timeout-s", type=float, default=d.connect_timeout_s,
                   help="how long a rank waits for the others to join the group" + D)
    p.add_argument("--report", default=None, help="JSON report path (default: RUN/distributed.json)")
    p.add_argument("--latency-target-ms", type=float, default=None,
                   help="hold each device's latency percentile under this by moving it along its threshold "
                        "path, among the combinations the run's grid certified (default: static thresholds)")
    p.add_argument("--latency-target-x", type=float, default=None,
                   help="instead of --latency-target-ms: this x the median latency of each adapting policy's "
                        "first 30 answers (after --warmup), measured before anything moves (default: none)")
    p.add_argument("--percentile", type=float, default=d.percentile,
                   help="latency percentile held under the target, in (0, 100)" + D)
    p.add_argument("--shadow-fraction", type=float, default=d.shadow_fraction,
                   help="under a target, share of samples also run to exit 7 to watch the answers' disagreement, "
                        "in [0, 1]" + D)
    p.add_argument("--threshold-path", default=None, metavar="FILE",
                   help='JSON {"POLICY": [[T2,...,T6], ...]}, conservative first, or a grid as report.json stores '
                        "it (default: the run's certified grid)")
    p.add_argument("--path-steps", type=int, default=d.path_steps,
                   help="settings of a --threshold-path list used, at most" + D)
    p.add_argument("--adapt-window", type=int, default=d.adapt_window, help="recent answers per device judged" + D)
    p.add_argument("--consistency-epsilon", type=float, default=d.consistency_epsilon,
                   help="disagreement with exit 7 the shadow check holds on a --threshold-path list (a grid says "
                        "its own), in (0, 1)" + D)
    p.add_argument("--timeline-window", type=int, default=d.timeline_window, help="samples per timeline row" + D)
    p.add_argument("--trace", default=None, metavar="DIR",
                   help="write every rank's timestamps of each message to DIR/rankR.json (a new or empty folder), "
                        "for `python benches/runtime_floor.py` to break a round down (default: none)")


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        run=args.run, split=args.split, samples=args.samples, images=args.images, predictions=args.predictions,
        policies=[p for p in args.policies.split(",") if p], thresholds=args.thresholds, setting=args.setting,
        window=args.window,
        chunk=args.chunk,
        deadline_ms=args.deadline_ms, deadline_factor=args.deadline_factor, dead_after_s=args.dead_after_s,
        link_delay_ms=args.link_delay_ms, link_mbps=args.link_mbps, link_jitter_ms=args.link_jitter_ms,
        faults=args.faults, reference_samples=args.reference_samples, warmup=args.warmup, threads=args.threads,
        cpus=args.cpus,
        backend=args.backend, device_backend=args.device_backend, artifacts=args.artifacts,
        connect_timeout_s=args.connect_timeout_s, report=args.report,
        latency_target_ms=args.latency_target_ms, latency_target_x=args.latency_target_x, percentile=args.percentile,
        shadow_fraction=args.shadow_fraction,
        threshold_path=args.threshold_path, path_steps=args.path_steps, adapt_window=args.adapt_window,
        consistency_epsilon=args.consistency_epsilon, timeline_window=args.timeline_window, trace=args.trace)
