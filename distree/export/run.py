"""export_run: every student of a run as artifacts of one format, with manifest.json beside them."""
import importlib.util
from pathlib import Path

from distree.errors import DistreeError
from distree.artifacts.manifest import build_manifest, clear_output, write_manifest
from distree.export.walks import export_plan
from distree.run_dir import class_names, read_config

FORMATS = ("onnx", "pt2")


def _exporter(fmt: str):
    """(export function, opset) of a format; imported here so that pt2 needs no onnx installed."""
    if fmt == "onnx":
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise DistreeError(f"--format onnx needs {', '.join(missing)}: pip install -r requirements.txt")
        from distree.export.onnx_export import export_onnx
        from distree.export.onnx_ops import OPSET
        return export_onnx, OPSET
    from distree.export.pt2_export import export_pt2
    return export_pt2, None


def default_out(run_dir, fmt: str) -> Path:
    return Path(run_dir) / f"export-{fmt}"


def export_run(run_dir, fmt: str, out=None, policy: str | None = None, thresholds: dict | None = None,
               setting: str | None = None, progress=print) -> tuple[Path, dict]:
    """Exports run_dir's students as `fmt` into out (default RUN/export-FMT); (out, manifest).

    thresholds: {policy: (5,)} as `distree.plan.parse_thresholds` gives them; else the run's
    `setting` (`distree.run_settings`; None: calibrated).
    """
    if fmt not in FORMATS:
        raise DistreeError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    export, opset = _exporter(fmt)
    plan = export_plan(run_dir, policy, thresholds, setting)
    out = clear_output(default_out(run_dir, fmt) if out is None else out)
    files = [out / f"student{i}.{fmt}" for i in range(len(plan.walks))]
    try:
        for walk, path in zip(plan.walks, files):
            export(walk, plan.example, path)
            progress(f"exported {path}")
    except BaseException:  # a failed export leaves no half of one behind
        for path in files:
            path.unlink(missing_ok=True)
        raise
    manifest = build_manifest(plan, fmt, files, class_names(read_config(run_dir)), opset)
    write_manifest(out, manifest)
    return out, manifest
