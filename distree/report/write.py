"""Writes an evaluation's report into a folder: report.json, report.md and the figures."""
import json
from pathlib import Path

from distree.evaluation import Evaluation
from distree.report.markdown import render
from distree.report.plots import write_plots
from distree.run_dir import REPORT, REPORT_MD


def write_report(evaluation: Evaluation, out) -> None:
    """report.json, report.md and the figures, into out."""
    out, shown = Path(out), evaluation.shown()
    figures = write_plots(shown, evaluation.test_scores, evaluation.last_right, out)
    (out / REPORT).write_text(json.dumps(evaluation.report, indent=1, allow_nan=False) + "\n")
    (out / REPORT_MD).write_text(render(shown, figures, evaluation.stored))
