"""Fault injection: signals, kills and full disks against real runs and sweeps in subprocesses.

For each fault: nothing finished is lost or changed, nothing is trained twice, and the next run of the
same command succeeds. ``python scripts/reliability_table.py`` turns this file's ``FAULTS`` table into
reports/reliability.md.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import compose_cfg

from normbench.results import RESULT_FILE, load_run, run_lock

LONG = ("train.budget=steps", "train.steps=4000", "train.history_points=40")
# fault -> (what happens, the test that shows it): read by scripts/reliability_table.py
FAULTS = {
    "SIGINT or SIGTERM on a run": (
        "one line, exit 130 or 143; no record, the run lock released; the same command trains it",
        "test_a_signal_stops_a_run_cleanly_and_the_rerun_trains_it",
    ),
    "SIGTERM on a sweep (basic launcher)": (
        "one line, exit 143; summary.txt lists the interrupted run; the rerun skips the finished one",
        "test_a_signal_stops_a_sweep_with_its_summary_and_the_rerun_resumes",
    ),
    "SIGTERM on a parallel sweep (joblib, 2 workers)": (
        "the same, and no worker process outlives the sweep",
        "test_a_signal_stops_a_sweep_with_its_summary_and_the_rerun_resumes",
    ),
    "full disk while writing visit.json after result.json": (
        "one logged line; the record stays whole and counts",
        "test_a_full_disk_for_the_visit_marker_keeps_the_record",
    ),
}


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    exe = str(Path(sys.executable).parent / "normbench-run")
    return subprocess.Popen(
        [exe, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition never held")
        time.sleep(0.2)


def _unlocked(folder: Path) -> bool:
    with run_lock(folder) as acquired:
        return acquired


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_a_run_cleanly_and_the_rerun_trains_it(tmp_path, signum):
    args = [*LONG, "hydra.run.dir=out"]
    proc = _start(args, tmp_path)
    _wait_for(
        lambda: (
            "step 100/4000" in (tmp_path / "out" / "normbench.log").read_text()
            if (tmp_path / "out" / "normbench.log").exists()
            else False
        )
    )
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    assert err.strip().splitlines() == [
        f"normbench-run: stopped by {signal.Signals(signum).name}: finished runs are kept, "
        "the same command resumes the rest"
    ]
    assert not (tmp_path / "out" / RESULT_FILE).exists() and _unlocked(tmp_path / "out")
    again = _start(["train.budget=steps", "train.steps=20", "hydra.run.dir=out"], tmp_path)
    assert again.wait(timeout=120) == 0
    assert load_run(tmp_path / "out")["status"] == "completed"


def _workers(session: int) -> list[int]:
    """Processes of the session ``session`` (the sweep's own process group and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize(
    "launcher", [("hydra/launcher=basic",), ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")]
)
def test_a_signal_stops_a_sweep_with_its_summary_and_the_rerun_resumes(tmp_path, launcher):
    grid = [
        "-m",
        "train.budget=steps",
        "train.steps=20,4000",
        "train.history_points=40",
        "sweep.root=sw",
        *launcher,
    ]
    proc = _start(grid, tmp_path)
    sweep_dir = tmp_path / "sw" / "default"
    short = compose_cfg("train.budget=steps", "train.steps=20", "train.history_points=40")
    from normbench.run import run_identity

    finished = sweep_dir / run_identity(short)[1] / RESULT_FILE
    _wait_for(finished.exists)
    _wait_for(lambda: any(p.is_dir() and p != finished.parent for p in sweep_dir.iterdir()))
    time.sleep(2)  # the long run is training
    stamp = finished.stat().st_mtime_ns
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == [
        "normbench-run: stopped by SIGTERM: finished runs are kept, the same command resumes the rest"
    ]
    summary = (sweep_dir / "summary.txt").read_text()
    assert "2 runs: 1 completed, 0 diverged, 0 failed, 0 skipped, 0 config error, 1 interrupted" in summary
    _wait_for(lambda: _workers(proc.pid) == [], timeout=10)  # no worker outlives the sweep
    long_dir = next(p for p in sweep_dir.iterdir() if p.is_dir() and p != finished.parent)
    assert not (long_dir / RESULT_FILE).exists() and _unlocked(long_dir)
    rerun = [
        "-m",
        "train.budget=steps",
        "train.steps=20,40",
        "train.history_points=40",
        "sweep.root=sw",
        *launcher,
    ]
    again = _start(rerun, tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "2 runs: 1 completed, 0 diverged, 0 failed, 1 skipped" in out
    assert finished.stat().st_mtime_ns == stamp  # the finished run untouched


def test_a_full_disk_for_the_visit_marker_keeps_the_record(tmp_path, monkeypatch, caplog):
    import normbench.sweep as sweep
    from normbench.run import execute

    record = execute(compose_cfg("train.budget=steps", "train.steps=4"), tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sweep, "write_json_atomic", full)
    sweep.mark_visit(tmp_path, "completed")  # no exception
    assert (
        f"could not write {tmp_path / sweep.VISIT_FILE} (completed): No space left on device" in caplog.text
    )
    assert load_run(tmp_path) == record
