"""Turning sweep folders into tables, figures and a markdown report. Imports no torch."""

from normbench.report.load import load_runs
from normbench.report.select import candidates, select_on_validation

__all__ = ["candidates", "load_runs", "select_on_validation"]
