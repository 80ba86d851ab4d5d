"""predictions.csv: what `deploy --images` answered for each image file, under each policy.

One row per file and policy: the file (relative to the folder), the policy, the predicted class
name and index, the label its folder gives (empty where none), each student's 1-based exit
(empty where the device's evidence was missing) and whether the answer was degraded (made
without some device). A file that could not be read has one row, with only its reason under
`skipped`. The file is written beside the report (RUN/predictions.csv) or at --predictions; a
file already there is replaced only if it is a predictions CSV distree wrote (its header is
distree's), so a user's own file is never overwritten: that is an error before the session starts.
"""
import csv
import os
from pathlib import Path

from distree.errors import DistreeError

FILENAME = "predictions.csv"
FIRST_COLUMNS = ["file", "policy", "predicted", "predicted_index", "label"]
SHOWN = 20  # files printed on the console; the CSV holds them all


def header(num_devices: int) -> list[str]:
    return FIRST_COLUMNS + [f"exit_student_{i}" for i in range(num_devices)] + ["degraded", "skipped"]


def predictions_path(report: Path, given: str | None) -> Path:
    """Where the CSV goes: `given`, else predictions.csv beside the report."""
    return Path(given) if given else Path(report).parent / FILENAME


def check_replaceable(path: Path) -> None:
    """An error unless path is free or holds a predictions CSV distree wrote."""
    if path.is_dir():
        raise DistreeError(f"--predictions {path} is a folder; give a file path")
    if not path.exists():
        return
    try:
        with open(path, newline="") as f:
            first = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError):
        first = []
    if first[:len(FIRST_COLUMNS)] != FIRST_COLUMNS:
        raise DistreeError(f"{path} exists and is not a predictions file distree wrote; move it or pass "
                           "--predictions with another path")


def class_name(index: int, names: list[str]) -> str:
    return names[index] if 0 <= index < len(names) else ""


def rows(files: list[str], skipped: list[tuple[str, str]], runs, labels: list[int], names: list[str]) -> list[list]:
    """The CSV's rows: per file, one per policy run (PolicyRun: preds, exits, degraded), then the skipped files."""
    n = runs[0].num_devices if runs else 0
    out = []
    for k, file in enumerate(files):
        for run in runs:
            if k >= len(run.preds):  # the session ended before this sample was answered
                continue
            exits = ["" if e < 0 else e + 1 for e in run.exits[k]]
            pred = run.preds[k]
            out.append([file, run.name, class_name(pred, names), pred, class_name(labels[k], names), *exits,
                        int(run.degraded[k]), ""])
    out += [[file, "", "", "", "", *[""] * n, "", why] for file, why in skipped]
    return out


def write_predictions(path: Path, files: list[str], skipped: list[tuple[str, str]], runs, labels: list[int],
                      names: list[str]) -> Path:
    """Writes the CSV (a temporary file, then a rename), prints the first files' answers, returns the path."""
    check_replaceable(path)  # checked before the session too; a file may have appeared since
    table = rows(files, skipped, runs, labels, names)
    tmp = Path(f"{path}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header(runs[0].num_devices if runs else 0))
        writer.writerows(table)
    os.replace(tmp, path)
    print_predictions(files, runs, names, path)
    return path


def print_predictions(files: list[str], runs, names: list[str], path: Path) -> None:
    """The first SHOWN files with each policy's answer (* degraded), and where the rest are."""
    width = max([len(f) for f in files[:SHOWN]] + [4]) + 2
    print(f"{'file':<{width}}" + "".join(f"{run.name:<16}" for run in runs))
    for k, file in enumerate(files[:SHOWN]):
        answers = [class_name(r.preds[k], names) + ("*" if r.degraded[k] else "") if k < len(r.preds) else "-"
                   for r in runs]
        print(f"{file:<{width}}" + "".join(f"{a:<16}" for a in answers))
    more = f"; {len(files) - SHOWN} more files" if len(files) > SHOWN else ""
    print(f"(* degraded: answered without some device){more}; every file's answer: {path}")
