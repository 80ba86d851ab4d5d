"""What preparing image files differently from the training images costs: a run's first N test images
saved as PNG files (as the dataset stores them: Fashion-MNIST's 28x28), classified at the last exit
from the tensors, from the files by the run's recorded rule, and from the files by the old
serving rule (centre-crop and resize to the input size, which is what `deploy --images` did to
Fashion-MNIST before the rule was recorded):

    python benches/padded_vs_resized.py --run runs/demo --samples 500 --out /tmp/fmnist-png

Prints the three accuracies; the PNG folder (OUT/CLASS_INDEX/NNNNN.png) is left for
`distree deploy --images OUT` and `examples/onnx_client.py`.
"""
import argparse
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from distree.inference.engine import InferenceEngine
from distree.policies import make_policy
from distree.run_dir import load_student_model, load_teacher, read_config, run_preprocessing, run_splits
from distree.samples import load_images, load_samples


def save_pngs(run: str, count: int, out: Path) -> None:
    """The first `count` test images as stored (a padded rule's border taken off) under out/LABEL/."""
    prep = run_preprocessing(run)
    test = run_splits(run, read_config(run)).test
    lo = (prep.size - prep.side) // 2
    for k in range(count):
        pixels = test.images[k, :, lo:lo + prep.side, lo:lo + prep.side]  # (C, side, side) uint8
        folder = out / str(int(test.labels[k]))
        folder.mkdir(parents=True, exist_ok=True)
        image = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
        Image.fromarray(image).save(folder / f"{k:05d}.png")


def last_exit_accuracy(run: str, network: str, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy on inputs x (S, C, H, W): the students' aggregated last exit, or the teacher's."""
    with torch.inference_mode():
        if network == "teacher":
            logits = load_teacher(run)(x)  # (S, K)
        else:
            engine = InferenceEngine(load_student_model(run), make_policy("last-exit"))
            logits = engine.run(x, torch.arange(len(x))).logits  # (S, K)
    return float((logits.argmax(-1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the PNG files")
    parser.add_argument("--network", choices=("students", "teacher"), default="students")
    args = parser.parse_args()
    save_pngs(args.run, args.samples, args.out)
    prep = run_preprocessing(args.run)
    split = load_samples(args.run, "test", args.samples)
    recorded = load_images(args.out, prep, warn=False)
    resized = load_images(args.out, replace(prep, resize="crop-resize", source=None), warn=False)
    order = torch.tensor([int(Path(f).stem) for f in recorded.files])  # files sorted by folder, then name
    rows = [("test tensors", split.x[order], split.labels[order]), (f"PNG files, the run's rule ({prep.resize})",
            recorded.x, recorded.labels), ("PNG files, crop-resize (the old serving rule)", resized.x, resized.labels)]
    print(f"{args.network}, last exit, first {args.samples} test images of {args.run}:")
    for name, x, labels in rows:
        print(f"  {name:<48} {100 * last_exit_accuracy(args.run, args.network, x, labels):.2f}%")


if __name__ == "__main__":
    main()
