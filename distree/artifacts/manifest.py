"""manifest.json: what an export folder holds, and the mark that lets a later export replace it.

A folder is ours only if its manifest.json says `"kind": "distree-export"`; anything else in
the way of an export is the user's and is never overwritten or deleted.
"""
import json
import os
from importlib import metadata
from pathlib import Path

from distree.errors import DistreeError
from distree.run_dir import jsonable_thresholds, load_surviving_sets, run_preprocessing, sha256

MANIFEST, KIND = "manifest.json", "distree-export"
VERSIONED = ("distree", "torch", "onnx", "onnxscript", "onnxruntime")


def versions() -> dict:
    """The versions an export was made with (None for a package that is not installed)."""
    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def read_manifest(out_dir) -> dict | None:
    """The manifest of an export folder; None where the folder holds no manifest of ours."""
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("kind") == KIND else None


def clear_output(out_dir) -> Path:
    """out_dir ready for a new export: created, or emptied of the files of an export made before.

    A folder that exists, is not empty and has no manifest of ours is the user's: an error.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DistreeError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        old = read_manifest(out)
        if old is None:
            raise DistreeError(f"--out {out} exists and is not a distree export (no {MANIFEST} of ours); "
                               "choose a new folder")
        for entry in old.get("students", []):
            (out / Path(entry["file"]).name).unlink(missing_ok=True)
        (out / MANIFEST).unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_manifest(plan, fmt: str, files: list[Path], class_names: list[str], opset: int | None) -> dict:
    """The manifest of the artifacts `files` (one per student, in order) exported from plan."""
    x, model = plan.example, plan.model
    policy = plan.policy
    return {
        "kind": KIND,
        "format": fmt,
        "run": str(Path(plan.run).resolve()),
        "policy": policy.name,
        "rule": getattr(policy, "rule", None),
        "inclusive": getattr(policy, "inclusive", None),
        "setting": plan.setting,
        "gate": plan.gate,  # the run's learned gate file a learned-gate export decides with
        "thresholds": jsonable_thresholds(plan.thresholds),  # exits 2..6
        "input": {"name": "image", "shape": list(x.shape), "dtype": "float32",
                  "normalisation": {"formula": "(pixels / 255 - mean) / std, per channel",
                                    "pixels": "Pillow's L (grey)" if x.shape[1] == 1 else "RGB",
                                    "mean": plan.mean, "std": plan.std}},
        "preprocessing": run_preprocessing(plan.run).to_dict(),  # image file -> input, as the run's training images
        "thresholds_input": {"name": "thresholds", "shape": [5], "dtype": "float32",
                             "note": "exits 2..6 decide against these: feed `thresholds` above for the export's "
                                     "own setting, or another setting of the same policy"}
        if policy.exits_early and fmt == "onnx" else None,
        "outputs": {"evidence": {"shape": [1, len(class_names)], "dtype": "float32"},
                    "exit": {"shape": [], "dtype": "int64", "note": "0-based: 0 is exit 1, 6 is exit 7"}},
        "aggregator": {**({"formula": "logits = sum of the students' evidence + bias", "bias": model.bias.tolist()}
                          if model.proj is None else {"formula": "logits = proj @ concat(evidence) + bias",
                                                      "bias": model.bias.tolist(), "proj": model.proj.weight.tolist()}),
                       "surviving_sets": surviving_sets(plan.run, len(model.students))},
        "class_names": list(class_names),
        "opset": opset,
        "versions": versions(),
        "students": [{"index": i, "file": f.name, "sha256": sha256(f)} for i, f in enumerate(files)],
    }


def surviving_sets(run, num_students: int) -> dict | None:
    """The run's aggregator for every proper subset of students, as an aggregator outside Python
    applies it when only some students answer; None for a run evaluated before they existed."""
    table = load_surviving_sets(run, num_students)
    if table is None:
        return None
    return {"formula": "with only the students in members answering: logits = sum over members i of "
                       "scale[k] * c_i + bias, k the position of i in members; c_i = evidence_i, or in the "
                       "projected space proj[:, i*D:(i+1)*D] @ evidence_i",
            **table.to_json()}


def takes_thresholds(manifest: dict) -> bool:
    """Whether an export's students take their thresholds as an input (ONNX exports of early-exit
    policies since they do); the others have theirs inside."""
    return bool(manifest.get("thresholds_input"))


def write_manifest(out_dir, manifest: dict) -> Path:
    path = Path(out_dir) / MANIFEST
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def verify_files(out_dir, manifest: dict) -> None:
    """An error unless every artifact the manifest lists is there with its sha256."""
    for entry in manifest["students"]:
        path = Path(out_dir) / entry["file"]
        if not path.exists():
            raise DistreeError(f"{path} is missing from the export")
        if sha256(path) != entry["sha256"]:
            raise DistreeError(f"{path} does not match its sha256 in {MANIFEST}: changed since the export")
