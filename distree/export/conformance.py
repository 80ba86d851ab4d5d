"""Conformance: every artifact of an export against the PyTorch engine, sample by sample.

The engine runs in streaming mode on one thread, as a device does; each artifact runs on the
same first N test samples. Exit indices must be identical, the class evidence within ATOL, and
the final predictions (the aggregator over the students' evidence) identical. The first
mismatch is an error naming the artifact, the student and the sample.

Artifacts that take their thresholds as an input (ONNX exports of early-exit policies) are
checked twice: at the export's own thresholds, and at a moved setting, each exit's lower-quartile
score on the checked samples (a setting nobody calibrated, under which samples leave at every
exit), as a device the runtime moves would run.
"""
from dataclasses import dataclass
from pathlib import Path

import torch

from distree.errors import DistreeError
from distree.artifacts.manifest import read_manifest, takes_thresholds, verify_files
from distree.inference.engine import InferenceEngine
from distree.inference.evidence import model_evidence, policy_scores
from distree.plan import load_policy
from distree.policies import check_thresholds
from distree.run_dir import GATE, load_student_model
from distree.samples import load_samples

ATOL = 1e-4  # class evidence: the artifacts sum in other orders than the C++ kernel


@dataclass
class Conformance:
    samples: int
    exit_histogram: list  # per student: samples leaving at each of the 7 exits
    max_abs_evidence_error: float
    accuracy: float  # of the exported students' aggregated predictions on the labelled samples
    moved_thresholds: list | None = None  # the second setting checked, where the artifacts take thresholds
    moved_exit_histogram: list | None = None


def _runner(fmt: str, path: Path):
    """x (1, C, H, W) tensor -> (u (1, K) tensor, exit int) for one artifact."""
    if fmt == "onnx":
        from distree.artifacts.onnx_student import OnnxStudent

        student = OnnxStudent(path)

        def run_onnx(x, thresholds=None):
            u, exit_index = student.run(x.numpy(), None if thresholds is None else thresholds.numpy())
            return torch.from_numpy(u), exit_index
        return run_onnx
    from distree.export.pt2_export import load_pt2

    walk = load_pt2(path)

    def run_pt2(x, thresholds=None):
        u, exit_index = walk(x)
        return u, int(exit_index)
    return run_pt2


def _policy(manifest: dict):
    return load_policy(manifest["policy"], manifest["run"], manifest.get("gate", GATE))


def moved_setting(model, policy, x: torch.Tensor) -> torch.Tensor:
    """Thresholds (5,): at each exit 2..6 the lower quartile of the students' finite scores on x (1.0 if none)."""
    with torch.inference_mode():
        scores = policy_scores(policy, model_evidence(model, x, torch.arange(len(x))))  # (N, 5, B)
    finite = [s[s.isfinite()] for s in scores.transpose(0, 1).flatten(1)]
    return torch.tensor([float(s.quantile(0.25)) if s.numel() else 1.0 for s in finite])


def check_export(out_dir, samples: int = 1000) -> Conformance:
    """Runs every artifact in out_dir on the run's first `samples` test samples against the engine."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise DistreeError(f"{out_dir} is not a distree export (no manifest.json of ours)")
    verify_files(out_dir, manifest)
    model, policy = load_student_model(manifest["run"]), _policy(manifest)
    loaded = load_samples(manifest["run"], "test", samples)
    x, labels = loaded.x, loaded.labels  # (S, C, H, W), (S,)
    own = check_thresholds([float(v) for v in manifest["thresholds"]])
    got_u, got_exit, error = _against_engine(out_dir, manifest, model, policy, x, own, None)
    labelled = labels >= 0
    with torch.no_grad():
        predictions = model.aggregate(got_u).argmax(-1)  # (S,)
    accuracy = float((predictions[labelled] == labels[labelled]).float().mean()) if labelled.any() else float("nan")
    result = Conformance(len(x), _histogram(got_exit), error, accuracy)
    if takes_thresholds(manifest):
        moved = moved_setting(model, policy, x)
        _, moved_exit, moved_error = _against_engine(out_dir, manifest, model, policy, x, moved, moved)
        result.moved_thresholds, result.moved_exit_histogram = moved.tolist(), _histogram(moved_exit)
        result.max_abs_evidence_error = max(error, moved_error)
    return result


def _histogram(exits: torch.Tensor) -> list:
    return [torch.bincount(e, minlength=7).tolist() for e in exits]


def _against_engine(out_dir, manifest: dict, model, policy, x: torch.Tensor, thresholds: torch.Tensor, fed):
    """Every artifact on x, fed thresholds `fed` (None: its own), against the engine at `thresholds`:
    (evidence (N, S, K), exits (N, S), largest evidence difference), or a DistreeError at the first mismatch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            reference = InferenceEngine(model, policy, thresholds).run(x, torch.arange(len(x)), mode="streaming")
            got_u, got_exit = _run_artifacts(out_dir, manifest, x, fed)
    finally:
        torch.set_num_threads(threads)
    files = [e["file"] for e in manifest["students"]]
    expected = reference.sent.float()  # (N, S, K) what each student sent, as a device sends it
    where = "" if fed is None else f"with thresholds {[round(t, 6) for t in fed.tolist()]} fed in: "
    error = _first_mismatch(files, got_u, got_exit, expected, reference.exits)
    if error:
        raise DistreeError(where + error)
    with torch.no_grad():
        predictions = model.aggregate(got_u).argmax(-1)  # (S,)
    wrong = (predictions != reference.logits.argmax(-1)).nonzero().flatten()
    if len(wrong):
        raise DistreeError(f"{where}sample {int(wrong[0])}: the exported students' aggregated prediction "
                           f"{int(predictions[wrong[0]])} differs from the engine's "
                           f"{int(reference.logits[wrong[0]].argmax())} ({len(wrong)} of {len(x)} samples)")
    return got_u, got_exit, float((got_u - expected).abs().max())


def _run_artifacts(out_dir, manifest: dict, x: torch.Tensor, thresholds: torch.Tensor | None):
    """Every artifact on every sample, fed thresholds (None: its own): evidence (N, S, K) and exits (N, S) int64."""
    us, exits = [], []
    for entry in manifest["students"]:
        run = _runner(manifest["format"], Path(out_dir) / entry["file"])
        outs = [run(x[b:b + 1], thresholds) for b in range(len(x))]
        us.append(torch.cat([u for u, _ in outs]))  # (S, K)
        exits.append(torch.tensor([e for _, e in outs]))  # (S,)
    return torch.stack(us), torch.stack(exits)


def _first_mismatch(files, got_u, got_exit, expected_u, expected_exit) -> str | None:
    """A sentence naming the first sample and student where an artifact disagrees with the engine."""
    for i, name in enumerate(files):
        bad_exit = (got_exit[i] != expected_exit[i]).nonzero().flatten()
        bad_u = ((got_u[i] - expected_u[i]).abs().amax(-1) > ATOL).nonzero().flatten()
        if len(bad_exit):
            b = int(bad_exit[0])
            return (f"{name} (student {i}), sample {b}: exit {int(got_exit[i, b]) + 1} but the engine's is exit "
                    f"{int(expected_exit[i, b]) + 1} ({len(bad_exit)} of {got_exit.shape[1]} samples differ)")
        if len(bad_u):
            b = int(bad_u[0])
            err = float((got_u[i, b] - expected_u[i, b]).abs().max())
            return (f"{name} (student {i}), sample {b}: class evidence differs from the engine's by {err:.3g} "
                    f"(more than {ATOL}; {len(bad_u)} of {got_u.shape[1]} samples)")
    return None
