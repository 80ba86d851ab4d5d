"""A device that computes with ONNX Runtime alone: it serves its student's exported ONNX file.

`distree export --format onnx` writes one ONNX file per student with the policy's thresholds
and the exit decision inside the graph (`If` nodes), and a manifest. Under
`--device-backend onnxruntime --artifacts DIR` a device never loads the PyTorch student: each
input goes to an ONNX Runtime session as a numpy array and the evidence and exit index come
back, so the device needs only onnxruntime and numpy for its compute (torch.distributed still
carries the messages). The session must run what the artifacts were exported for: one policy,
the plan's thresholds, the run's number of students; `check_artifacts` says what differs
before any process starts.
"""
from pathlib import Path

import torch

from distree.errors import DistreeError
from distree.artifacts.manifest import read_manifest, verify_files
from distree.artifacts.onnx_student import OnnxStudent


class OnnxStep:
    """One student's ONNX session in the place of a DeviceStep, for a local policy."""

    def __init__(self, student: OnnxStudent, policy):
        self.student, self.policy = student, policy

    def run_one(self, x: torch.Tensor, sample: int) -> tuple[torch.Tensor, int]:
        """x (C, H, W) -> (u (K,) float32 to send, 0-based exit), decided inside the ONNX graph."""
        u, exit = self.student.run(x.numpy()[None])  # (1, C, H, W) -> (1, K), ()
        return torch.from_numpy(u.reshape(-1)), int(exit)


def check_artifacts(folder, plan: list, n: int) -> dict:
    """The manifest of folder if a session of plan over n devices can serve it; else a DistreeError."""
    if folder is None:
        raise DistreeError("--device-backend onnxruntime needs --artifacts DIR, a `distree export --format onnx` folder")
    manifest = read_manifest(folder)
    if manifest is None:
        raise DistreeError(f"--artifacts {folder} is not a distree export (no manifest.json of ours)")
    if manifest["format"] != "onnx":
        raise DistreeError(f"{folder} holds a {manifest['format']} export; onnxruntime devices serve an onnx one")
    if [s.name for s in plan] != [manifest["policy"]]:
        raise DistreeError(f"{folder} was exported for policy {manifest['policy']}; run the session with "
                           f"--policies {manifest['policy']} (got {','.join(s.name for s in plan)})")
    given = plan[0].thresholds.tolist()
    baked = [float(t) for t in manifest["thresholds"]]
    if not torch.allclose(torch.tensor(given), torch.tensor(baked), rtol=1e-6, atol=0.0, equal_nan=True):
        raise DistreeError(f"{folder} has thresholds {baked} inside; this session's are {given}")
    if len(manifest["students"]) != n:
        raise DistreeError(f"{folder} holds {len(manifest['students'])} students; the run has {n}")
    verify_files(folder, manifest)
    return manifest


def onnx_steps(folder, plan: list, index: int, threads: int) -> list[OnnxStep]:
    """Device index's steps: its student's ONNX session for the plan's one policy."""
    path = Path(folder) / read_manifest(folder)["students"][index]["file"]
    return [OnnxStep(OnnxStudent(path, threads=threads), plan[0].policy)]
