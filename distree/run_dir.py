"""The run directory: the name of every file a run holds, and how each is written and read back.

A run holds config.json, teacher.pt, partition.json, students.pt and metrics.csv from
training (and images.pt, the decoded images of a folder dataset); learned_gate.pt, report.json,
report.md, the plots, settings.json (`distree.run_settings`: the named settings deploy and
export serve) and surviving_sets.json (the aggregator for every set of students that may be
left when devices are lost, `distree.models.surviving_sets`) from `distree evaluate`, with RUN/evaluations/NAME/ for a named evaluation; and
distributed.json from the runtime. Checkpoints are written to a temporary file and renamed over the old one, so a kill at any
moment leaves either the previous epoch's checkpoint or the new one, never half of one. They
are read with weights_only=True: plain tensors and containers, no code.
"""
import csv
import hashlib
import json
import math
import os
from dataclasses import asdict, fields
from pathlib import Path

import torch

from distree.data import DataConfig, Splits, load_dataset
from distree.errors import DistreeError
from distree.models.distree_model import DistrEEModel
from distree.models.student import Student, StudentConfig
from distree.models.surviving_sets import SurvivingSets
from distree.models.wrn import WideResNet, WRNConfig
from distree.policies import LearnedGatePolicy
from distree.preprocessing import Preprocessing

CONFIG, TEACHER, STUDENTS = "config.json", "teacher.pt", "students.pt"
PARTITION, METRICS = "partition.json", "metrics.csv"
GATE, REPORT, REPORT_MD = "learned_gate.pt", "report.json", "report.md"
DISTRIBUTED = "distributed.json"
SURVIVING = "surviving_sets.json"
IMAGE_CACHE = "images.pt"  # a folder dataset decoded once: rebuilt whenever the folder's files change

CALIBRATED = "calibrated"  # the report's name for each policy's main setting: least FLOPs within max_drop, on val


def sha256(path) -> str:
    """The sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_atomic(obj, path) -> None:
    """torch.save to path.tmp, flushed to disk, then renamed over path."""
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    """A checkpoint's contents (weights_only=True), or a DistreeError saying what is wrong."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DistreeError(f"no checkpoint at {path}") from None
    except Exception as err:  # a damaged file fails in many ways (unpickling, zip, index, key errors)
        raise DistreeError(f"corrupt checkpoint {path}: {type(err).__name__}") from None


def config_from_dict(cls, d: dict):
    """A config dataclass from its dict, rejecting keys it does not know."""
    names = {f.name for f in fields(cls)}
    if not isinstance(d, dict) or set(d) - names:
        raise DistreeError(f"bad {cls.__name__} in the run's config: {d!r}")
    return cls(**d)


def read_config(run_dir) -> dict:
    """The run's config.json: data, teacher, partition and students sections."""
    path = Path(run_dir) / CONFIG
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DistreeError(f"{run_dir} is not a run directory (no {CONFIG}); start one with `distree train-teacher`") \
            from None
    except (OSError, ValueError) as err:
        raise DistreeError(f"corrupt {path}: {err}") from None


def write_config(run_dir, config: dict) -> None:
    """Writes config.json atomically (a temporary file, then a rename)."""
    path = Path(run_dir) / CONFIG
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, path)


def load_state(model: torch.nn.Module, state: dict, path) -> None:
    """load_state_dict, with a one-line error when the weights do not fit the model."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise DistreeError(f"checkpoint {path} does not fit its model: {str(err).splitlines()[0]}") from None


def build_teacher(config: dict) -> WideResNet:
    """The (untrained) teacher a run's config describes."""
    data = config["data_shape"]
    model = WideResNet(config_from_dict(WRNConfig, config["teacher"]["model"]), data["num_classes"],
                       data["in_channels"])
    return model.to(memory_format=torch.channels_last)


def build_students(config: dict) -> DistrEEModel:
    """The (untrained) N students and aggregator a run's config describes."""
    data, students = config["data_shape"], config["students"]
    cfg = config_from_dict(StudentConfig, students["model"])
    model = DistrEEModel([Student(data["num_classes"], data["in_channels"], cfg.width, 16, cfg.exit_space,
                                  cfg.head_backend) for _ in range(students["num_students"])], data["num_classes"])
    return model.to(memory_format=torch.channels_last)


def load_teacher(run_dir) -> WideResNet:
    """The run's trained teacher, in eval mode; an error if its training has not finished."""
    path = Path(run_dir) / TEACHER
    if not path.exists():
        raise DistreeError(f"no teacher in {run_dir}; run `distree train-teacher --out {run_dir}` first")
    ckpt = load_checkpoint(path)
    config = ckpt.get("config") or {}
    if ckpt.get("epoch") != config.get("teacher", {}).get("optim", {}).get("epochs"):
        raise DistreeError(f"the teacher in {run_dir} has not finished training; continue it with "
                           f"`distree train-teacher --out {run_dir} --resume`")
    model = build_teacher(config)
    load_state(model, ckpt["model"], path)
    return model.eval()


def load_student_model(run_dir) -> DistrEEModel:
    """The run's trained students and aggregator, in eval mode."""
    path = Path(run_dir) / STUDENTS
    if not path.exists():
        raise DistreeError(f"no students in {run_dir}; run `distree train-students --run {run_dir}` first")
    ckpt = load_checkpoint(path)
    try:
        model = build_students(ckpt["config"])
    except (KeyError, TypeError) as err:
        raise DistreeError(f"checkpoint {path} lacks its model's config ({err!r})") from None
    load_state(model, ckpt["model"], path)
    return model.eval()


def data_config(config: dict) -> DataConfig:
    """The run's dataset, as load_dataset's arguments."""
    return config_from_dict(DataConfig, config["data"])


def run_splits(run_dir, config: dict) -> Splits:
    """The run's dataset, a folder's decoded images kept in the run's image cache, prepared by the
    run's recorded preprocessing (runs from before it was recorded: their dataset's rule)."""
    return load_dataset(**asdict(data_config(config)), cache=Path(run_dir) / IMAGE_CACHE,
                        preprocessing=recorded_preprocessing(config))


def recorded_preprocessing(config: dict) -> Preprocessing | None:
    """The preprocessing config.json records (since train-teacher records it), else None."""
    return None if "preprocessing" not in config else Preprocessing.from_dict(config["preprocessing"])


def run_preprocessing(run_dir, config: dict = None) -> Preprocessing:
    """How the run's images were prepared: as recorded, or, for a run from before it was recorded,
    its dataset's rule (Fashion-MNIST padded 28 -> 32, others cropped and resized) with the
    training split's statistics."""
    config = config or read_config(run_dir)
    return recorded_preprocessing(config) or run_splits(run_dir, config).preprocessing


def class_names(config: dict) -> list[str]:
    """The run's class names (index order); runs from before names were kept get "0", "1", ..."""
    shape = config["data_shape"]
    return shape.get("class_names") or [str(k) for k in range(shape["num_classes"])]


def teacher_accuracy(run_dir) -> float | None:
    """The teacher's test accuracy from the run's metrics.csv, if its training finished."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("phase") == "teacher" and r.get("test_acc")]
    return float(rows[-1]["test_acc"]) if rows else None


def save_learned_gate(gate: LearnedGatePolicy, path, run_config: dict) -> None:
    """A learned gate fitted on the run's training split (RUN/learned_gate.pt, beside the students,
    or a named evaluation's own)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"dataset": run_config["data"]["name"], "num_students": gate.weight.shape[0],
                 "state": gate.state_dict()}, path)


def load_learned_gate(run_dir, gate: str = GATE) -> LearnedGatePolicy:
    """The run's fitted learned gate (`gate`: its file, relative to the run), or an error saying how to fit it."""
    path = Path(run_dir) / gate
    if not path.exists():
        raise DistreeError(f"no fitted learned gate in {run_dir}; run `distree evaluate --run {run_dir}` first")
    return LearnedGatePolicy.from_state_dict(load_checkpoint(path)["state"])


def save_surviving_sets(run_dir, table: SurvivingSets) -> None:
    """The run's surviving-set aggregators, marked with the students they were fitted for."""
    path = Path(run_dir) / SURVIVING
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps({"students_sha256": sha256(Path(run_dir) / STUDENTS), **table.to_json()}, indent=1) + "\n")
    os.replace(tmp, path)


def load_surviving_sets(run_dir, num_students: int) -> SurvivingSets | None:
    """The run's surviving-set aggregators; None where the run has none, or has them for students
    it no longer holds (trained again since): `distree evaluate` fits them anew."""
    path = Path(run_dir) / SURVIVING
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
    except ValueError as e:
        raise DistreeError(f"{path} is damaged ({e}); delete it and run `distree evaluate --run {run_dir}`") from e
    if d.get("students_sha256") != sha256(Path(run_dir) / STUDENTS):
        return None
    return SurvivingSets.from_json(d, num_students)


def jsonable_thresholds(t: torch.Tensor) -> list:
    """Thresholds as JSON: infinities (stop nobody / everybody) as the strings "inf" and "-inf"."""
    return [v if math.isfinite(v) else ("inf" if v > 0 else "-inf") for v in t.tolist()]
