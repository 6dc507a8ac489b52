"""argparse types shared by the benchmark scripts: a bad value is refused when the arguments are parsed
(one line naming it, exit 2), before a benchmark spends its minutes."""

from __future__ import annotations

import argparse
import subprocess

from worktree import ROOT


def count(text: str) -> int:
    """An integer >= 1 (rounds, calls, steps)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be an integer >= 1")
    return value


def git_commit(rev: str) -> str:
    """``rev`` as given, when it names a commit of this repository."""
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True
    )
    if proc.returncode:
        raise argparse.ArgumentTypeError(f"{rev}: not a commit of this repository ({ROOT})")
    return rev
