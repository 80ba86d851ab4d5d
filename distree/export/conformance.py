"""Conformance: every artifact of an export against the PyTorch engine, sample by sample.

The engine runs in streaming mode on one thread, as a device does; each artifact runs on the
same first N test samples. Exit indices must be identical, the class evidence within ATOL, and
the final predictions (the aggregator over the students' evidence) identical. The first
mismatch is an error naming the artifact, the student and the sample.
"""
from dataclasses import dataclass
from pathlib import Path

import torch

from distree.errors import DistreeError
from distree.artifacts.manifest import read_manifest, verify_files
from distree.inference.engine import InferenceEngine
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


def _runner(fmt: str, path: Path):
    """x (1, C, H, W) tensor -> (u (1, K) tensor, exit int) for one artifact."""
    if fmt == "onnx":
        from distree.artifacts.onnx_student import OnnxStudent

        student = OnnxStudent(path)

        def run_onnx(x):
            u, exit_index = student.run(x.numpy())
            return torch.from_numpy(u), exit_index
        return run_onnx
    from distree.export.pt2_export import load_pt2

    walk = load_pt2(path)

    def run_pt2(x):
        u, exit_index = walk(x)
        return u, int(exit_index)
    return run_pt2


def _engine(manifest: dict):
    run = manifest["run"]
    model = load_student_model(run)
    thresholds = check_thresholds([float(v) for v in manifest["thresholds"]])
    return model, InferenceEngine(model, load_policy(manifest["policy"], run, manifest.get("gate", GATE)), thresholds)


def check_export(out_dir, samples: int = 1000) -> Conformance:
    """Runs every artifact in out_dir on the run's first `samples` test samples against the engine."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise DistreeError(f"{out_dir} is not a distree export (no manifest.json of ours)")
    verify_files(out_dir, manifest)
    model, engine = _engine(manifest)
    loaded = load_samples(manifest["run"], "test", samples)
    x, labels = loaded.x, loaded.labels  # (S, C, H, W), (S,)
    index = torch.arange(len(x))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            reference = engine.run(x, index, mode="streaming")
            got_u, got_exit = _run_artifacts(out_dir, manifest, x)
    finally:
        torch.set_num_threads(threads)
    files = [e["file"] for e in manifest["students"]]
    expected = reference.sent.float()  # (N, S, K) what each student sent, as a device sends it
    error = _first_mismatch(files, got_u, got_exit, expected, reference.exits)
    if error:
        raise DistreeError(error)
    with torch.no_grad():
        predictions = model.aggregate(got_u).argmax(-1)  # (S,)
    wrong = (predictions != reference.logits.argmax(-1)).nonzero().flatten()
    if len(wrong):
        raise DistreeError(f"sample {int(wrong[0])}: the exported students' aggregated prediction "
                           f"{int(predictions[wrong[0]])} differs from the engine's "
                           f"{int(reference.logits[wrong[0]].argmax())} ({len(wrong)} of {len(x)} samples)")
    labelled = labels >= 0
    accuracy = float((predictions[labelled] == labels[labelled]).float().mean()) if labelled.any() else float("nan")
    histogram = [torch.bincount(e, minlength=7).tolist() for e in got_exit]
    return Conformance(len(x), histogram, float((got_u - expected).abs().max()), accuracy)


def _run_artifacts(out_dir, manifest: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every artifact on every sample: evidence (N, S, K) and exits (N, S) int64."""
    us, exits = [], []
    for entry in manifest["students"]:
        run = _runner(manifest["format"], Path(out_dir) / entry["file"])
        outs = [run(x[b:b + 1]) for b in range(len(x))]
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
