"""A stock ONNX Runtime client of a `distree export --format onnx` folder: onnxruntime, numpy and
Pillow only (no torch, no distree), following nothing but manifest.json and docs/export.md.

Each image file is prepared by the manifest's "preprocessing" rule (the run's training images'
own), every student's .onnx file walks it to its own exit, and the aggregator's formula sums the
students' evidence into the class logits. An image under a folder named by a class (a class name
or its index) is labelled, and the accuracy over labelled images is printed:

    python examples/onnx_client.py RUN/export-onnx IMAGES_DIR [--csv answers.csv]
"""
import argparse
import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LUMA = (19595, 38470, 7471)  # Pillow's L weights, in 1/65536 (the manifest's grey step)


def prepare(path: Path, rule: dict) -> np.ndarray:
    """An image file -> the students' input (1, C, size, size) float32, by the manifest's rule."""
    side = rule["source"] if rule["resize"] == "pad" else rule["size"]
    with Image.open(path) as img:
        img.draft("RGB", (side, side))
        img = ImageOps.exif_transpose(img).convert("RGB")
        if img.size != (side, side):
            img = ImageOps.fit(img, (side, side), Image.Resampling.BILINEAR)  # centre crop, resize
        rgb = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.int64)  # (3, side, side)
    if rule["resize"] == "pad":
        lo = (rule["size"] - side) // 2
        hi = rule["size"] - side - lo
        rgb = np.pad(rgb, ((0, 0), (lo, hi), (lo, hi)))  # (3, size, size), black borders
    if rule["channels"] == 1:
        rgb = (rgb * np.array(LUMA).reshape(3, 1, 1)).sum(0, keepdims=True) + 32768 >> 16  # (1, size, size)
    mean = np.asarray(rule["mean"], np.float32).reshape(-1, 1, 1)
    std = np.asarray(rule["std"], np.float32).reshape(-1, 1, 1)
    return ((rgb.astype(np.float32) / np.float32(255) - mean) / std)[None]  # (1, C, size, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="the export folder (manifest.json and studentI.onnx)")
    parser.add_argument("images", type=Path, help="a folder of image files (CLASS/file.png for labels)")
    parser.add_argument("--csv", type=Path, help="also write file, predicted class per image here")
    args = parser.parse_args()
    manifest = json.loads((args.export / "manifest.json").read_text())
    rule, names, agg = manifest["preprocessing"], manifest["class_names"], manifest["aggregator"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    students = [ort.InferenceSession(str(args.export / s["file"]), options, providers=["CPUExecutionProvider"])
                for s in manifest["students"]]
    # exports of early-exit policies take the thresholds (exits 2..6) as an input: the export's own here
    setting = {"thresholds": np.array([float(t) for t in manifest["thresholds"]], np.float32)} \
        if manifest.get("thresholds_input") else {}
    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in SUFFIXES)
    right = labelled = 0
    rows = []
    for path in files:
        x = prepare(path, rule)
        evidence = [s.run(["evidence", "exit"], {"image": x, **setting})[0][0] for s in students]  # N x (K,)
        if "proj" in agg:
            logits = np.asarray(agg["proj"], np.float32) @ np.concatenate(evidence) + np.asarray(agg["bias"])
        else:
            logits = np.sum(evidence, axis=0) + np.asarray(agg["bias"], np.float32)  # (K,)
        pred = int(np.argmax(logits))
        folder = path.parent.name if path.parent != args.images else None
        label = names.index(folder) if folder in names else int(folder) if folder and folder.isdigit() else None
        if label is not None:
            labelled, right = labelled + 1, right + (pred == label)
        rows.append([str(path.relative_to(args.images)), names[pred]])
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            csv.writer(f).writerows([["file", "predicted"], *rows])
    accuracy = f"; accuracy {100 * right / labelled:.2f}% on {labelled} labelled" if labelled else ""
    print(f"{len(files)} images{accuracy}")


if __name__ == "__main__":
    main()
