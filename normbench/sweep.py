"""Sweep bookkeeping: the per-job visit marker and the end-of-sweep summary callback."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from normbench.results import write_json_atomic

VISIT_FILE = "visit.json"
OUTCOMES = ("completed", "diverged", "failed", "skipped", "config_error")


def mark_visit(out_dir: Path, outcome: str, log_file: str | None = None, error: str | None = None) -> None:
    """Record what this invocation did with a job folder (read by :class:`SweepSummary`)."""
    visit = {"outcome": outcome, "time": time.time(), "log": log_file, "error": error}
    write_json_atomic(out_dir / VISIT_FILE, visit)


def visits_since(sweep_dir: Path, since: float) -> list[dict[str, Any]]:
    found = []
    for path in sorted(sweep_dir.glob(f"*/{VISIT_FILE}")):
        try:
            visit = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if visit.get("time", 0) >= since:
            found.append({**visit, "dir": str(path.parent)})
    return found


def summarize(visits: list[dict[str, Any]]) -> str:
    counts = Counter(v["outcome"] for v in visits)
    line = ", ".join(f"{counts.get(o, 0)} {o.replace('_', ' ')}" for o in OUTCOMES)
    lines = [f"normbench sweep: {len(visits)} runs: {line}"]
    for v in visits:
        if v["outcome"] == "failed":
            lines.append(f"  failed, log: {v.get('log') or v['dir']}")
        elif v["outcome"] == "config_error":
            lines.append(f"  configuration error ({v['dir']}): {v.get('error')}")
    return "\n".join(lines)


class SweepSummary(Callback):
    """Prints, after a multirun, how many runs completed, diverged, failed or were skipped, and the log
    file of each failure. Counts come from the visit markers the jobs wrote during this invocation, so
    they are right for every launcher (jobs may run in other processes or on other machines).

    Jobs with a configuration error write no result; the sweep exits with status 1 after the summary
    when there was any (the other jobs still ran)."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        visits = visits_since(sweep_dir, self.started)
        summary = summarize(visits)
        print(summary, flush=True)
        (sweep_dir / "summary.txt").write_text(summary + "\n")
        if any(v["outcome"] == "config_error" for v in visits):
            raise SystemExit(1)
