"""deploy --images' per-file CSV: one row per file and policy, skipped files named, and a user's own
file at the path never overwritten."""
import csv

import pytest

from distree.errors import DistreeError
from distree.runtime.predictions import check_replaceable, predictions_path, write_predictions
from distree.runtime.summary import PolicyRun


def policy_run(name: str, preds: list, exits: list) -> PolicyRun:
    run = PolicyRun(name, True, [1.0] * 5, 2)
    for pred, e in zip(preds, exits):
        run.record(-1, pred, e, 0.01, 0.005)
    return run


def test_rows_name_each_file_its_class_each_students_exit_and_the_skipped(tmp_path, capsys):
    runs = [policy_run("distree", [1, 0], [[2, 4], [6, -1]]), policy_run("last-exit", [1, 1], [[6, 6], [6, 6]])]
    path = predictions_path(tmp_path / "distributed.json", None)
    write_predictions(path, ["cat/a.png", "b.jpg"], [("broken.png", "UnidentifiedImageError")], runs, [1, -1],
                      ["dog", "cat"])
    rows = list(csv.DictReader(open(path)))
    assert path == tmp_path / "predictions.csv" and len(rows) == 5
    assert rows[0] == {"file": "cat/a.png", "policy": "distree", "predicted": "cat", "predicted_index": "1",
                       "label": "cat", "exit_student_0": "3", "exit_student_1": "5", "degraded": "0", "skipped": ""}
    assert (rows[2]["file"], rows[2]["exit_student_1"], rows[2]["degraded"], rows[2]["label"]) == ("b.jpg", "", "1", "")
    assert rows[4]["file"] == "broken.png" and rows[4]["skipped"] == "UnidentifiedImageError"
    out = capsys.readouterr().out
    assert "cat/a.png" in out and "dog*" in out and str(path) in out  # * marks the degraded answer
    write_predictions(path, ["b.jpg"], [], runs, [-1], ["dog", "cat"])  # ours: replaced
    assert len(list(csv.DictReader(open(path)))) == 2


def test_a_users_file_is_never_overwritten(tmp_path):
    mine = tmp_path / "mine.csv"
    mine.write_text("name,score\nx,1\n")
    with pytest.raises(DistreeError, match="not a predictions file distree wrote"):
        check_replaceable(predictions_path(tmp_path / "r.json", str(mine)))
    with pytest.raises(DistreeError, match="is a folder"):
        check_replaceable(tmp_path)
    assert mine.read_text() == "name,score\nx,1\n"
    check_replaceable(tmp_path / "new.csv")  # a free path is fine
