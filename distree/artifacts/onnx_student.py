"""An exported ONNX student on ONNX Runtime, with numpy only: what an edge device runs.

Nothing here imports torch or distree's models, so a device process that serves an export needs
onnxruntime and numpy for its compute, and Pillow to read image files:

    prepare = load_preprocessing("export")  # the run's rule, from export/manifest.json
    student = OnnxStudent("export/student0.onnx")
    u, exit = student.run(prepare("shoe.png"))  # (1, C, H, W) float32 -> u (1, K) float32, 0-based exit int
    u, exit = student.run(x, thresholds)  # another setting: thresholds (5,) float32 for exits 2..6
"""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from distree.preprocessing import Preprocessing

INPUT, THRESHOLDS, OUTPUTS = "image", "thresholds", ("evidence", "exit")  # the names onnx_export.py gives
THRESHOLDS_METADATA = "distree.thresholds"  # the export's own thresholds, comma-separated, in the file's metadata


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
        # exports of a policy that exits early take their thresholds as an input (older ones have them inside)
        self.takes_thresholds = THRESHOLDS in [i.name for i in self.session.get_inputs()]
        own = self.session.get_modelmeta().custom_metadata_map.get(THRESHOLDS_METADATA)
        self.thresholds = None if own is None else np.array([float(t) for t in own.split(",")], np.float32)  # (5,)

    def run(self, x: np.ndarray, thresholds: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """x (1, C, H, W) float32 -> (u (1, K) float32, 0-based exit), with the export's thresholds or these
        (5,) for exits 2..6."""
        feed = {INPUT: np.ascontiguousarray(x, dtype=np.float32)}
        if thresholds is not None and not self.takes_thresholds:
            raise ValueError("this export has its thresholds inside; export it again to move them")
        if self.takes_thresholds:
            feed[THRESHOLDS] = np.ascontiguousarray(self.thresholds if thresholds is None else thresholds,
                                                    dtype=np.float32)
        u, exit_index = self.session.run(list(OUTPUTS), feed)
        return u, int(exit_index)
