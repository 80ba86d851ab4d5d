"""One input pipeline: image files are prepared by the run's recorded rule exactly as its training
images were, so the same images give the same inputs and predictions from tensors and from files."""
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distree.data import FASHION_MNIST_DIR, DataConfig, TensorImages
from distree.errors import DistreeError
from distree.inference.engine import InferenceEngine
from distree.policies import make_policy
from distree.preprocessing import Preprocessing, pad
from distree.run_dir import (build_students, load_student_model, read_config, run_preprocessing, run_splits,
                             save_atomic, write_config)
from distree.samples import load_images, load_samples
from distree.training.presets import run_config
from test_runtime import make_run

needs_fashion_mnist = pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(),
                                         reason="dataset-fashion-mnist not installed")
COUNT = 40  # test images saved as files


def fashion_run(path: Path) -> Path:
    """A run on Fashion-MNIST with 2 untrained students and no recorded preprocessing, as before it was recorded."""
    config = run_config("smoke")
    config["data"] = asdict(DataConfig("fashion-mnist"))
    config["data_shape"] = {"num_classes": 10, "in_channels": 1, "image_size": 32}
    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    write_config(path, config)
    save_atomic({"config": config, "model": build_students(config).state_dict()}, path / "students.pt")
    return path


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> Path:
    if not Path(FASHION_MNIST_DIR).is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    return fashion_run(tmp_path_factory.mktemp("fashion"))


def predictions(run, x: torch.Tensor) -> list[int]:
    """The engine's last-exit predictions on inputs x (S, C, H, W)."""
    engine = InferenceEngine(load_student_model(run), make_policy("last-exit"))
    with torch.inference_mode():
        return engine.run(x, torch.arange(len(x))).logits.argmax(-1).tolist()


def save_images(pixels: np.ndarray, folder: Path, suffix: str) -> Path:
    """uint8 images (S, H, W) or (S, H, W, 3) as folder/000.png, 001.png, ... (sorted order is index order)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, p in enumerate(pixels):
        Image.fromarray(p).save(folder / f"{k:03d}{suffix}", quality=90)
    return folder


def test_pad_rule_pads_a_28x28_image_and_fits_others_first():
    prep = Preprocessing("pad", 32, 1, [0.25], [0.5], source=28)
    grey = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    x = prep(grey)  # (1, 1, 32, 32)
    assert x.shape == (1, 1, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], (pad(grey[None], 32).astype(np.float32) / 255 - 0.25) / 0.5)
    assert (x[0, 0, :2] == np.float32(-0.5)).all()  # black borders
    assert prep.fits((28, 28), colour=False) and not prep.fits((28, 28), colour=True)
    assert not prep.fits((64, 48), colour=False)
    assert prep(Image.new("RGB", (64, 48), (255, 255, 255)))[0, 0, 2:30, 2:30].min() > 1  # fitted to 28, then padded
    assert Preprocessing.from_dict(prep.to_dict()) == prep and any("pad" in s for s in prep.to_dict()["steps"])
    with pytest.raises(DistreeError, match="preprocessing"):
        Preprocessing("stretch", 32, 1, [0.5], [0.5])


@needs_fashion_mnist
def test_png_and_jpeg_files_are_prepared_as_the_test_tensors(fashion, tmp_path):
    """PNG (lossless): the same inputs bit for bit and the same predictions as the test split's tensors.
    JPEG (lossy): the files' inputs equal the training transform applied to the JPEG-decoded pixels."""
    split = load_samples(fashion, "test", COUNT)  # (S, 1, 32, 32)
    test = run_splits(fashion, read_config(fashion)).test
    originals = test.images[:COUNT, 0, 2:30, 2:30].numpy()  # (S, 28, 28): Fashion-MNIST as stored
    png = load_samples(fashion, images=str(save_images(originals, tmp_path / "png", ".png")))
    assert torch.equal(png.x, split.x) and png.converted == 0 and len(png.files) == COUNT
    assert predictions(fashion, png.x) == predictions(fashion, split.x)

    jpeg = load_samples(fashion, images=str(save_images(originals, tmp_path / "jpeg", ".jpg")))
    decoded = np.stack([np.asarray(Image.open(tmp_path / "jpeg" / f)) for f in jpeg.files])  # (S, 28, 28)
    as_training = TensorImages(torch.from_numpy(pad(decoded[:, None], 32)), torch.zeros(COUNT, dtype=torch.long),
                               test.preprocessing, flip=False)
    assert torch.equal(jpeg.x, as_training.batch(torch.arange(COUNT))[0])
    assert predictions(fashion, jpeg.x) == predictions(fashion, as_training.batch(torch.arange(COUNT))[0])


def test_png_files_of_a_colour_run_are_its_test_tensors(tmp_path):
    run = make_run(tmp_path / "run", 2)  # synthetic: 32x32 RGB, the crop-resize rule
    split = load_samples(run, "test", COUNT)
    images = run_splits(run, read_config(run)).test.images[:COUNT].permute(0, 2, 3, 1).numpy()  # (S, 32, 32, 3)
    files = load_samples(run, images=str(save_images(images, tmp_path / "png", ".png")))
    assert run_preprocessing(run).resize == "crop-resize"
    assert torch.equal(files.x, split.x) and predictions(run, files.x) == predictions(run, split.x)


@needs_fashion_mnist
def test_images_of_another_size_or_colour_are_converted_with_one_warning(fashion, tmp_path, capsys):
    (tmp_path / "3").mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "3" / "photo.png")
    Image.new("L", (28, 28), 128).save(tmp_path / "fits.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    got = load_samples(fashion, images=str(tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "skipped 1 of 3" in err[0] and "broken.png" in err[0]
    assert "1 of 2 images" in err[1] and "28x28 grey" in err[1] and "padded to 32x32" in err[1]
    assert got.x.shape == (2, 1, 32, 32) and got.labels.tolist() == [3, -1] and got.converted == 1
    assert got.files == ["3/photo.png", "fits.png"] and got.skipped == [("broken.png", "UnidentifiedImageError")]


def test_folder_images_go_through_a_given_rule(tmp_path):
    (tmp_path / "3").mkdir()
    Image.new("RGB", (28, 28), (255, 0, 0)).save(tmp_path / "3" / "a.png")
    Image.new("L", (40, 20), 128).save(tmp_path / "b.bmp")
    got = load_images(tmp_path, Preprocessing("crop-resize", 32, 1, [0.5], [0.25]), warn=False)
    assert got.x.shape == (2, 1, 32, 32) and got.labels.tolist() == [3, -1] and got.converted == 2
    assert torch.allclose(got.x[1], torch.full((1, 32, 32), (128 / 255 - 0.5) / 0.25), atol=1e-6)
    assert torch.allclose(got.x[0], torch.full((1, 32, 32), (76 / 255 - 0.5) / 0.25), atol=1e-6)  # red's L is 76


@needs_fashion_mnist
def test_a_run_without_a_recorded_rule_gets_its_datasets_and_a_recorded_one_is_used(fashion, tmp_path):
    prep = run_preprocessing(fashion)
    assert (prep.resize, prep.source, prep.size, prep.channels) == ("pad", 28, 32, 1)
    config = read_config(fashion)
    recorded = {**prep.to_dict(), "mean": [0.5], "std": [0.25]}
    write_config(tmp_path, {**config, "preprocessing": recorded})
    (tmp_path / "students.pt").symlink_to(Path(fashion) / "students.pt")
    x = load_samples(tmp_path, "test", 2).x
    pixels = run_splits(fashion, config).test.images[:2].float() / 255  # (2, 1, 32, 32)
    assert torch.equal(x, (pixels - 0.5) / 0.25)
    with pytest.raises(DistreeError, match="does not fit"):
        write_config(tmp_path, {**config, "preprocessing": {**recorded, "resize": "crop-resize", "source": None}})
        load_samples(tmp_path, "test", 2)


def test_negative_sample_count_names_the_option(tmp_path):
    with pytest.raises(DistreeError, match="must be >= 0"):
        load_samples(make_run(tmp_path / "run", 2), "test", -1)
