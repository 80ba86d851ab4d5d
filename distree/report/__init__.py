"""The evaluation report, presented: report.json, the readable report.md and the figures; and a
distributed session's figures, drawn from its distributed.json."""
from distree.report.timeline_plot import write_session_figures
from distree.report.write import write_report

__all__ = ["write_report", "write_session_figures"]
