"""An exported ONNX student on ONNX Runtime, with numpy only: what an edge device runs.

Nothing here imports torch or distree's models, so a device process that serves an export needs
onnxruntime and numpy for its compute, and Pillow to read image files:

    prepare = load_preprocessing("export")  # the run's rule, from export/manifest.json
    student = OnnxStudent("export/student0.onnx")
    u, exit = student.run(prepare("shoe.png"))  # (1, C, H, W) float32 -> u (1, K) float32, 0-based exit int
"""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from distree.preprocessing import Preprocessing

INPUT, OUTPUTS = "image", ("evidence", "exit")  # the names onnx_export.py gives


def load_preprocessing(export_dir) -> Preprocessing:
    """The export's preprocessing (manifest.json "preprocessing"): call it on a Pillow image, a path to
    one or a uint8 array (H, W) or (H, W, 3) to get a student's input (1, C, H, W) float32, prepared
    exactly as the run's training images were (numpy and Pillow only)."""
    manifest = json.loads((Path(export_dir) / "manifest.json").read_text())  # read here: manifest.py needs torch
    return Preprocessing.from_dict(manifest["preprocessing"])


class OnnxStudent:
    """One student's .onnx file in an ONNX Runtime session (one intra-op thread by default)."""

    def __init__(self, path, threads: int = 1):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3  # errors only: an export older than its unused constants warns per constant
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """x (1, C, H, W) float32 -> (u (1, K) float32, 0-based exit)."""
        u, exit_index = self.session.run(list(OUTPUTS), {INPUT: np.ascontiguousarray(x, dtype=np.float32)})
        return u, int(exit_index)
