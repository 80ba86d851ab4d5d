"""One student's walk as one ONNX file: its stages as `If` nodes, the fused ops in standard ops.

torch.onnx.export (dynamo=True) traces the walk with torch.export; each stage's torch.cond
becomes an ONNX `If` on the exit gate's decision, and the translation table (onnx_ops.py)
rewrites distree::exit_head and distree::exit_gate into plain ONNX ops. The file runs on stock
ONNX Runtime: input "image" (1, C, H, W) float32 -> "evidence" (1, K) float32, "exit" () int64.
"""
import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from distree.export.onnx_ops import OPSET, translation_table
from distree.export.onnx_session import INPUT, OUTPUTS

_QUIET = ("torch.onnx", "onnxscript", "onnx_ir")  # loggers that narrate every export step


@contextlib.contextmanager
def _quiet():
    """The exporter's progress lines and warnings off: a CLI run prints one line per artifact."""
    loggers = [logging.getLogger(name) for name in _QUIET]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecations
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(walk: torch.nn.Module, x: torch.Tensor, path) -> Path:
    """Writes walk (a GraphWalk) traced on x (1, C, H, W) to path as one self-contained .onnx file."""
    path = Path(path)
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(walk, (x,), dynamo=True, opset_version=OPSET,
                                    custom_translation_table=translation_table(),
                                    input_names=[INPUT], output_names=list(OUTPUTS), verbose=False)
        program.save(str(path), external_data=False)
    return path
