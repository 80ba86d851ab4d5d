"""Image-folder datasets: decoding, skipped bad files, errors, the run's cache, and the whole pipeline
(train-teacher, partition, train-students, evaluation, deploy --images) on a generated folder."""
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distree.cli import main
from distree.data import folder, load_dataset
from distree.errors import DistreeError
from distree.evaluation import EvaluateConfig, evaluate_run
from distree.run_dir import IMAGE_CACHE, class_names, read_config, run_splits

COLOURS = {"cat": (200, 60, 40), "dog": (40, 80, 200)}  # a class is a tint, plus noise


def photo(path: Path, tint, size, seed: int, fmt: str = None) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(tint) + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, fmt)


def make_folder(root: Path, per_class: dict = None) -> Path:
    """DIR/{train,test}/{cat,dog}: PNGs of 40x30 and JPEGs of 24x24, one corrupt and one empty file."""
    per_class = per_class or {"train": 20, "test": 6}
    for split, n in per_class.items():
        for c, (cls, tint) in enumerate(COLOURS.items()):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                ext, size = (".png", (40, 30)) if i % 2 else (".jpg", (24, 24))
                photo(d / f"{i}{ext}", tint, size, seed=1000 * c + i + (split == "test") * 500)
    (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    (root / "train" / "dog" / "notes.txt").write_text("not an image: ignored")
    return root


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("photos"))


def test_folder_splits_skip_bad_files_with_one_warning(image_dir, capsys):
    s = load_dataset("folder", str(image_dir), val_size=4, image_size=16)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 2 of 54" in err[0]
    assert "broken.png" in err[0] and "empty.jpg" in err[0]
    assert s.class_names == ["cat", "dog"] and (s.num_classes, s.in_channels, s.image_size) == (2, 3, 16)
    assert (len(s.train) + len(s.val), len(s.test)) == (40, 12)
    assert s.train.images.shape[1:] == (3, 16, 16) and s.train.images.dtype == torch.uint8
    red = s.test.images[s.test.labels == 0].float().mean((0, 2, 3))  # (3,) cat's mean colour
    assert red[0] > red[2] + 60  # channels are R, G, B and labels follow the folders


def test_grey_folder_has_one_channel_and_crops_to_centre(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                img = Image.new("L", (30, 10), 0)  # wide: a centre crop keeps columns 10..19
                img.paste(255, (10, 0, 20, 10))
                img.save(tmp_path / split / cls / f"{i}.bmp")
    s = load_dataset("folder", str(tmp_path), val_size=1, image_size=10)
    assert s.in_channels == 1 and s.train.images.shape[1:] == (1, 10, 10)
    assert (s.test.images.float() / 255 > 0.9).float().mean() > 0.9  # the white centre fills the square


def test_folder_errors(tmp_path):
    with pytest.raises(DistreeError, match="needs --data-dir"):
        load_dataset("folder")
    with pytest.raises(DistreeError, match="needs train/CLASS/ and test/CLASS/"):
        load_dataset("folder", str(tmp_path))
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a").mkdir(parents=True)
    with pytest.raises(DistreeError, match="no images"):
        load_dataset("folder", str(tmp_path))
    photo(tmp_path / "train" / "a" / "1.png", (0, 0, 0), (8, 8), 0)
    photo(tmp_path / "test" / "a" / "1.png", (0, 0, 0), (8, 8), 0)
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "bad.png").write_bytes(b"")
    with pytest.raises(DistreeError, match=r"class folder .*train/b has no readable images"):
        load_dataset("folder", str(tmp_path))
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(DistreeError, match="classes that train does not: c"):
        load_dataset("folder", str(tmp_path))
    with pytest.raises(DistreeError, match="resizes a folder dataset only"):
        load_dataset("synthetic", image_size=64)


def test_cache_is_used_then_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    root, cache = make_folder(tmp_path / "photos", {"train": 6, "test": 2}), tmp_path / IMAGE_CACHE
    first = load_dataset("folder", str(root), val_size=1, cache=cache)
    assert cache.is_file()
    decodes = []
    real = folder.read_images
    monkeypatch.setattr(folder, "read_images", lambda *a: decodes.append(1) or real(*a))
    again = load_dataset("folder", str(root), val_size=1, cache=cache)
    assert decodes == [] and torch.equal(again.test.images, first.test.images)
    photo(root / "test" / "cat" / "0.jpg", (0, 255, 0), (24, 24), seed=1)  # same name, new picture
    changed = load_dataset("folder", str(root), val_size=1, cache=cache)
    assert decodes == [1] and not torch.equal(changed.test.images, first.test.images)
    os.remove(root / "train" / "dog" / "1.png")
    assert len(load_dataset("folder", str(root), val_size=1, cache=cache).train) == len(first.train) - 1
    assert decodes == [1, 1]


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def folder_run(image_dir, tmp_path_factory) -> Path:
    """A smoke run on the image folder: teacher, partition and students, one epoch each."""
    run = tmp_path_factory.mktemp("runs") / "photos"
    assert cli("train-teacher", "--out", run, "--preset", "smoke", "--data", "folder", "--data-dir", image_dir,
               "--epochs", 1, "--val-size", 4) == 0
    assert cli("partition", "--run", run) == 0
    assert cli("train-students", "--run", run, "--epochs", 1) == 0
    return run


@pytest.mark.slow
def test_pipeline_on_an_image_folder(folder_run):
    config = read_config(folder_run)
    assert class_names(config) == ["cat", "dog"] and config["data_shape"]["in_channels"] == 3
    assert (folder_run / IMAGE_CACHE).is_file()
    evaluation = evaluate_run(folder_run, EvaluateConfig(gate_samples=32, measure_time=False, resplits=0))
    assert len(evaluation.report["exit_accuracy"]) == 7 and len(run_splits(folder_run, config).test) == 12
    assert evaluation.report["class_names"] == ["cat", "dog"]


@pytest.mark.slow
def test_deploy_answers_every_readable_image_in_a_csv(image_dir, folder_run, tmp_path, capsys):
    """No --samples: every file; a row per file in predictions.csv beside the report, skipped files named."""
    report = tmp_path / "distributed.json"
    assert cli("deploy", "--run", folder_run, "--images", image_dir, "--policies", "last-exit",
               "--reference-samples", 0, "--timeout-s", 120, "--report", report) == 0
    out = capsys.readouterr().out
    assert "classifying 52 images" in out and "skipped 2 that cannot be read" in out and "broken.png" in out
    answered = json.loads(report.read_text())
    assert answered["samples"] == 52 and answered["class_names"] == ["cat", "dog"]
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    answers = [r for r in rows if not r["skipped"]]
    assert [r["file"] for r in answers] == answered["files"] and len(answers) == 52
    assert [r["predicted_index"] for r in answers] == [str(p) for p in answered["policies"]["last-exit"]["predictions"]]
    assert all(r["exit_student_0"] == "7" and r["label"] == r["file"].split("/")[1] for r in answers)
    assert sorted(r["file"] for r in rows if r["skipped"]) == ["train/cat/broken.png", "train/dog/empty.jpg"]
    mine = tmp_path / "mine.csv"
    mine.write_text("my,own\n")
    assert cli("deploy", "--run", folder_run, "--images", image_dir, "--predictions", mine, "--policies",
               "last-exit", "--report", report) == 2
    assert mine.read_text() == "my,own\n" and "not a predictions file distree wrote" in capsys.readouterr().err
