"""The evaluation report, presented: report.json, the readable report.md and the figures."""
from distree.report.write import write_report

__all__ = ["write_report"]
