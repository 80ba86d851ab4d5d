"""One student's walk as one ONNX file: its stages as `If` nodes, the fused ops in standard ops.

torch.onnx.export (dynamo=True) traces the walk with torch.export; each stage's torch.cond
becomes an ONNX `If` on the exit gate's decision, and the translation table (onnx_ops.py)
rewrites distree::exit_head and distree::exit_gate into plain ONNX ops. The file runs on stock
ONNX Runtime: input "image" (1, C, H, W) float32 -> "evidence" (1, K) float32, "exit" () int64.
A policy that exits early also takes "thresholds" (5,) float32 for exits 2..6, so a device can be
moved to another setting without a new export; the export's own are in the manifest and in the
file's metadata (`distree.thresholds`, comma-separated), where `OnnxStudent` finds its default.
A required input rather than an initializer with a default: ONNX Runtime warns at load about
every initializer that a graph input may override.

The exporter leaves some constants no node reads (one per `If` branch that only passes zeros
on); they are dropped before the file is written, so ONNX Runtime has nothing to clean up and
nothing to warn about, and the outputs stay bit for bit what they were.
"""
from pathlib import Path

import torch

from distree.export.onnx_ops import OPSET, translation_table
from distree.artifacts.onnx_student import INPUT, OUTPUTS, THRESHOLDS, THRESHOLDS_METADATA
from distree.export.quiet import quiet


def export_onnx(walk: torch.nn.Module, x: torch.Tensor, path) -> Path:
    """Writes walk (a GraphWalk) traced on x (1, C, H, W) to path as one self-contained .onnx file; a walk
    whose policy exits early takes its thresholds as an input too, its own in the file's metadata."""
    path = Path(path)
    step = walk.step
    args, names = ((x, step.thresholds.clone()), [INPUT, THRESHOLDS]) if step.policy.exits_early else ((x,), [INPUT])
    with torch.no_grad(), quiet():
        program = torch.onnx.export(walk, args, dynamo=True, opset_version=OPSET,
                                    custom_translation_table=translation_table(),
                                    input_names=names, output_names=list(OUTPUTS), verbose=False)
        drop_unused_initializers(program.model.graph)
        if len(args) == 2:
            program.model.metadata_props[THRESHOLDS_METADATA] = ",".join(repr(float(t)) for t in step.thresholds)
        program.save(str(path), external_data=False)
    return path


def drop_unused_initializers(graph) -> int:
    """Removes from an onnx_ir graph, and every subgraph of its `If` nodes, the initializers no node
    reads and no graph returns; how many it removed."""
    removed = 0
    for g in (graph, *graph.subgraphs()):
        for value in list(g.initializers.values()):
            if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
                del g.initializers[value.name]
                removed += 1
    return removed
