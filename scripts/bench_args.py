"""argparse types shared by the benchmark scripts: a bad value is refused when the arguments are parsed
(one line naming it, exit 2), before a benchmark spends its minutes."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

from worktree import ROOT

from normbench.argtypes import positive_int
from normbench.cli import CONF_DIR

count = positive_int()  # rounds, calls, steps


def presets(group: str) -> list[str]:
    """The options of the config group ``group`` (``task``, ``experiment``): the names Hydra accepts."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def seed_list(text: str) -> str:
    """A sweep's seeds as Hydra takes them, ``0,1,2``: integers >= 0, comma-separated."""
    if not all(part.strip().isdigit() for part in text.split(",")):
        raise argparse.ArgumentTypeError(f"{text}: must be seeds, integers >= 0 separated by commas (0,1,2)")
    return text


def norms_json(text: str) -> dict[str, Any]:
    """A norms_cuda.json as ``bench_norms.py --device cuda`` saves it, read: its rows and their setting."""
    try:
        saved = json.loads(Path(text).read_text())
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"{text}: not JSON ({exc})") from None
    keys = ("device", "torch", "rounds", "inner", "rows")
    if (
        not isinstance(saved, dict)
        or not all(k in saved for k in keys)
        or not isinstance(saved["rows"], list)
    ):
        raise argparse.ArgumentTypeError(
            f"{text}: not the JSON bench_norms.py --device cuda saves (an object with {', '.join(keys)})"
        )
    return saved


def git_commit(rev: str) -> str:
    """``rev`` as given, when it names a commit of this repository."""
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True
    )
    if proc.returncode:
        raise argparse.ArgumentTypeError(f"{rev}: not a commit of this repository ({ROOT})")
    return rev


def git_head() -> str:
    """The checkout's commit, and whether normbench/ has uncommitted changes (for a report's header)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "normbench"], cwd=ROOT, capture_output=True, text=True
    )
    return head.stdout.strip() + (", with uncommitted changes" if dirty.stdout.strip() else "")


def command_line(args: argparse.Namespace, leave_out: tuple[str, ...] = ("out",)) -> str:
    """The options of parsed ``args`` as they are written on a command line (``--batch-sizes 2 32``),
    those named in ``leave_out`` and those left unset (None) left out."""
    return " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k not in leave_out and v is not None
    )
