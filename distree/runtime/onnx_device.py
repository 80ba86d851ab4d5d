"""A device that computes with ONNX Runtime alone: it serves its student's exported ONNX file.

`distree export --format onnx` writes one ONNX file per student with the exit decision inside
the graph (`If` nodes) and the policy's thresholds as an input whose default is the exported
setting, and a manifest. Under `--device-backend onnxruntime --artifacts DIR` a device never
loads the PyTorch student: each input goes to an ONNX Runtime session as a numpy array, with
the thresholds in force, and the evidence and exit index come back, so the device needs only
onnxruntime and numpy for its compute (torch.distributed still carries the messages). A
THRESHOLDS message moves the thresholds it feeds, so these devices follow a latency target and
take their set's setting after a loss as PyTorch devices do; a shadow sample runs the whole
graph once more with NaN thresholds, which no score passes, to exit 7.

The session must run what the artifacts were exported for: one policy, the run's number of
students, and (for exports made before thresholds were an input) the plan's thresholds;
`check_artifacts` says what differs before any process starts.
"""
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from distree.errors import DistreeError
from distree.artifacts.manifest import read_manifest, takes_thresholds, verify_files
from distree.artifacts.onnx_student import OnnxStudent
from distree.policies import NUM_THRESHOLDS


class OnnxStep:
    """One student's ONNX session in the place of a DeviceStep, for a local policy, deciding with
    thresholds (5,) (None: the ones inside an export that has no thresholds input)."""

    def __init__(self, student: OnnxStudent, policy, thresholds: torch.Tensor | None):
        self.student, self.policy, self.thresholds = student, policy, None
        if thresholds is not None:
            self.set_thresholds(thresholds)

    def set_thresholds(self, thresholds: torch.Tensor) -> None:
        """Decide with thresholds (5,) from the next sample on (a THRESHOLDS message)."""
        self.thresholds = thresholds.numpy().astype(np.float32)

    def run_one(self, x: torch.Tensor, sample: int) -> tuple[torch.Tensor, int]:
        """x (C, H, W) -> (u (K,) float32 to send, 0-based exit), decided inside the ONNX graph."""
        u, exit = self.student.run(x.numpy()[None], self.thresholds)  # (1, C, H, W) -> (1, K), ()
        return torch.from_numpy(u.reshape(-1)), int(exit)

    def per_exit(self, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """A shadow's walk: one step, the whole graph with thresholds no score passes -> (exit 7, u (K,))."""
        u, exit = self.student.run(x.numpy()[None], np.full(NUM_THRESHOLDS, np.nan, np.float32))
        yield exit, torch.from_numpy(u.reshape(-1))


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
    if not takes_thresholds(manifest) and not torch.allclose(torch.tensor(given), torch.tensor(baked), rtol=1e-6,
                                                             atol=0.0, equal_nan=True):
        raise DistreeError(f"{folder} has thresholds {baked} inside (an export from before thresholds were an "
                           f"input: export it again to serve others); this session's are {given}")
    if len(manifest["students"]) != n:
        raise DistreeError(f"{folder} holds {len(manifest['students'])} students; the run has {n}")
    verify_files(folder, manifest)
    return manifest


def onnx_steps(folder, plan: list, index: int, threads: int) -> list[OnnxStep]:
    """Device index's steps: its student's ONNX session for the plan's one policy, with the plan's thresholds."""
    manifest = read_manifest(folder)
    path = Path(folder) / manifest["students"][index]["file"]
    thresholds = plan[0].thresholds if takes_thresholds(manifest) else None
    return [OnnxStep(OnnxStudent(path, threads=threads), plan[0].policy, thresholds)]
