"""Turning sweep folders into tables, figures and a markdown report. Imports no torch."""

from normbench.report.load import load_runs

__all__ = ["load_runs"]
