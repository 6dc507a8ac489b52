"""Fault injection: signals, kills and full disks against real runs and sweeps in subprocesses.

For each fault: nothing finished is lost or changed, nothing is trained twice, and the next run of the
same command succeeds. ``python scripts/reliability_table.py`` turns this file's ``FAULTS`` table into
reports/reliability.md.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import QUICK_EVAL, compose_cfg

from normbench.results import RESULT_FILE, load_run, run_lock

LONG = ("train.budget=steps", "train.steps=4000", "train.history_points=40")
# fault -> (what happens, the test that shows it): read by scripts/reliability_table.py
FAULTS = {
    "SIGINT or SIGTERM on a run": (
        "one line, exit 130 or 143; no record, the run lock released; the same command trains it",
        "test_a_signal_stops_a_run_cleanly_and_the_rerun_trains_it",
    ),
    "SIGINT on a run started with SIGINT ignored (a script's background job)": (
        "the same clean stop, exit 130: the run restores Python's handler",
        "test_ctrl_c_stops_a_run_started_with_sigint_ignored",
    ),
    "SIGTERM on a sweep (basic launcher)": (
        "one line, exit 143; summary.txt lists the interrupted run; the rerun skips the finished one",
        "test_a_signal_stops_a_sweep_with_its_summary_and_the_rerun_resumes",
    ),
    "SIGTERM on a parallel sweep (joblib, 2 workers)": (
        "the same, and no worker process outlives the sweep",
        "test_a_signal_stops_a_sweep_with_its_summary_and_the_rerun_resumes",
    ),
    "kill -9 of a parallel population sweep (n_jobs=2)": (
        "its workers end within a second; a rerun started at once trains every run once",
        "test_kill_9_of_a_parallel_population_sweep_leaves_no_trainer_and_the_rerun_trains_each_run_once",
    ),
    "kill -9 at a random moment (seeded) of a run, a joblib sweep, a population sweep with and without n_jobs": (
        "every finished record unchanged, no partial file; the same command trains each unfinished run once",
        "test_kill_9_at_a_random_moment_loses_only_unfinished_runs",
    ),
    "a read-only sweep folder": (
        "a finished sweep still resumes and prints its summary (one line says summary.txt could not be "
        "written); one with runs to train stops with one line, exit 2",
        "test_a_read_only_sweep_folder_is_one_line_and_a_finished_sweep_still_reports",
    ),
    "a read-only output folder for a run": (
        "one line naming the folder and the reason, exit 1",
        "test_a_read_only_sweep_folder_is_one_line_and_a_finished_sweep_still_reports",
    ),
    "full disk while writing result.json": (
        "one logged line naming the file, exit 1, no partial record; the next run writes it",
        "test_a_full_disk_for_the_record_is_one_line_and_leaves_no_partial_file",
    ),
    "full disk while writing visit.json after result.json": (
        "one logged line; the record stays whole and counts",
        "test_a_full_disk_for_the_visit_marker_keeps_the_record",
    ),
    # faults injected by tests in other files
    "hostile result.json files (nested 200 KB deep, booleans for errors, NaN, dangling or looping links, FIFOs, /dev/zero, 17 MB)": (
        "each skipped with one warning naming the file and why; the report builds from the rest",
        "test_integrity.py::test_report_skips_each_bad_file_once_with_its_reason",
    ),
    "a nested JSON file in place of a finished sweep's result.json": (
        "that run trains again on rerun, the others are skipped",
        "test_integrity.py::test_a_hostile_result_file_in_a_finished_sweep_is_retrained_not_a_crash",
    ),
    "a grid point repeating an earlier one's config (seed=0,0) under joblib or the population launcher": (
        "the config trains once into its folder, the repeat counted as repeated in the summary",
        "test_sweep.py::test_a_grid_point_repeating_an_earlier_ones_config_trains_once",
    ),
    "damaged CIFAR files (empty, cut at a record, labels out of range, 300 as a pixel, counts that differ)": (
        "one line naming the file and what is wrong, exit 2, before any training",
        "test_cifar.py::test_a_damaged_binary_file_is_refused_naming_the_file",
    ),
    "a download server that accepts and never answers": (
        "fails after the timeout naming the URL; nothing left under the data root",
        "test_cifar.py::test_a_download_that_never_answers_times_out_and_leaves_nothing",
    ),
    "kill -9 of a population process": (
        "only the population that was training is lost; the rerun trains it",
        "test_population_launcher.py::test_kill_9_of_a_population_process_loses_only_its_unfinished_group",
    ),
    "two sweeps sharing a folder": (
        "each summary counts only its own jobs' visits",
        "test_sweep.py::test_a_sweep_counts_only_its_own_jobs_visits",
    ),
    "values a float32 model cannot use (lr 1e308, 10^5 threads, eps 0, n_jobs 0)": (
        "one line naming the value and the allowed range, exit 2, nothing written",
        "test_run.py::test_bad_values_are_refused_before_any_work",
    ),
}


FAULT_SITE = Path(__file__).parent / "faults"  # its sitecustomize.py injects NORMBENCH_FAULT


def _start(args: list[str], cwd: Path, fault: str | None = None) -> subprocess.Popen:
    exe = str(Path(sys.executable).parent / "normbench-run")
    env = {**os.environ}
    if fault:
        env.update(PYTHONPATH=str(FAULT_SITE), NORMBENCH_FAULT=fault)
    return subprocess.Popen(
        [exe, *args, *QUICK_EVAL],
        cwd=cwd,
        env=env,
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
    short = compose_cfg("train.budget=steps", "train.steps=20", "train.history_points=40", *QUICK_EVAL)
    from normbench.experiment.identity import run_identity

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
    from normbench.experiment.run import execute

    record = execute(compose_cfg("train.budget=steps", "train.steps=4"), tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sweep, "write_json_atomic", full)
    sweep.mark_visit(tmp_path, "completed")  # no exception
    assert (
        f"could not write {tmp_path / sweep.VISIT_FILE} (completed): No space left on device" in caplog.text
    )
    assert load_run(tmp_path) == record


def test_kill_9_of_a_parallel_population_sweep_leaves_no_trainer_and_the_rerun_trains_each_run_once(tmp_path):
    """hydra/launcher=population with n_jobs=2: the workers hold their runs' locks and end with the
    sweep's process, so a rerun started at once never trains a run beside an orphan."""
    long = ("train.budget=steps", "train.steps=200000", "train.history_points=2000")  # a population is fast
    grid = ["-m", "seed=0,1", "norm=identity,layernorm", *long, "sweep.root=sw"]
    grid += ["hydra/launcher=population", "hydra.launcher.n_jobs=2"]
    proc = _start(grid, tmp_path)
    sweep_dir = tmp_path / "sw" / "default"

    def training() -> bool:
        logs = list(sweep_dir.glob("*/normbench.log"))
        return len(logs) == 4 and all("step 100 (epoch" in p.read_text() for p in logs)

    _wait_for(training)
    os.kill(proc.pid, signal.SIGKILL)  # the sweep's process alone; its workers are left to themselves
    proc.wait(timeout=10)
    _wait_for(lambda: _workers(proc.pid) == [], timeout=10)
    assert not list(sweep_dir.glob(f"*/{RESULT_FILE}"))
    short = [*grid[:3], "train.budget=steps", "train.steps=30", "train.history_points=1", *grid[6:]]
    again = _start(short, tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "4 runs: 4 completed, 0 diverged, 0 failed, 0 skipped" in out
    assert len(list(sweep_dir.glob(f"*/{RESULT_FILE}"))) == 4


def test_the_committed_reliability_table_is_this_suites():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from reliability_table import OUT, table

    assert OUT.read_text() == table(FAULTS), "run python scripts/reliability_table.py"
    for _, test in FAULTS.values():  # every test named exists
        file, _, name = test.rpartition("::")
        source = (Path(__file__).parent / (file or Path(__file__).name)).read_text()
        assert f"def {name}(" in source, test


def test_a_read_only_sweep_folder_is_one_line_and_a_finished_sweep_still_reports(tmp_path):
    grid = ["-m", "seed=0,1", "train.budget=steps", "train.steps=5", "sweep.root=sw"]
    assert _start(grid, tmp_path).wait(timeout=300) == 0
    sweep_dir = tmp_path / "sw" / "default"
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*") if p.is_file()}
    finished = _start(grid, tmp_path, fault=f"erofs:{tmp_path / 'sw'}")
    out, err = finished.communicate(timeout=300)
    assert finished.returncode == 0 and err == "", err
    assert "2 runs: 0 completed, 0 diverged, 0 failed, 2 skipped" in out
    assert f"could not write {Path('sw/default/summary.txt')}: Read-only file system" in out
    grown = _start([*grid[:2], "seed=0,1,2", *grid[2:]], tmp_path, fault=f"erofs:{tmp_path / 'sw'}")
    _, err = grown.communicate(timeout=300)
    assert grown.returncode == 2
    assert err.strip().splitlines() == [
        "normbench-run: error: hydra.sweep.dir=sw/default: cannot write there (Read-only file system); "
        "1 of 3 runs are still to train"
    ]
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*") if p.is_file()} == stamps
    one = _start(
        ["train.budget=steps", "train.steps=5", "hydra.run.dir=ro/run"],
        tmp_path,
        fault=f"erofs:{tmp_path / 'ro'}",
    )
    _, err = one.communicate(timeout=300)
    assert one.returncode == 1
    assert err.strip().splitlines() == ["normbench-run: error: ro/run: Read-only file system"]


def test_a_full_disk_for_the_record_is_one_line_and_leaves_no_partial_file(tmp_path):
    args = ["train.budget=steps", "train.steps=5", "hydra.run.dir=run"]
    proc = _start(args, tmp_path, fault=f"enospc:{tmp_path / 'run' / RESULT_FILE}")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in out + err
    assert "run failed outside training: " in out and "No space left on device" in out
    assert not (tmp_path / "run" / RESULT_FILE).exists() and not list((tmp_path / "run").glob(".*.tmp"))
    assert _start(args, tmp_path).wait(timeout=300) == 0
    assert load_run(tmp_path / "run")["status"] == "completed"


KILL_MODES = {
    "run": ["train.budget=steps", "train.steps=3000", "hydra.run.dir=sw/default/run"],
    "joblib": ["-m", "train.steps=20,300", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "population": ["-m", "train.steps=20,300", "seed=0,1", "hydra/launcher=population"],
    "population_n_jobs": [
        "-m",
        "train.steps=20,300",
        "seed=0,1",
        "hydra/launcher=population",
        "hydra.launcher.n_jobs=2",
    ],
}


@pytest.mark.parametrize("mode", list(KILL_MODES))
def test_kill_9_at_a_random_moment_loses_only_unfinished_runs(tmp_path, mode):
    """The whole process group killed at a moment drawn (seeded) within its first seconds of training."""
    args = [*KILL_MODES[mode], "train.budget=steps", "train.history_points=1", "sweep.root=sw"]
    proc = _start(args, tmp_path)
    sweep_dir = tmp_path / "sw" / "default"
    _wait_for(lambda: any(sweep_dir.glob("*/.lock")) or proc.poll() is not None)
    time.sleep(random.Random(f"{mode}").uniform(0.0, 3.0))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sweep_dir.glob(f"*/{RESULT_FILE}")}
    for path in before:
        load_run(path)  # whole, valid records only
    again = _start(args, tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sweep_dir.glob(f"*/{RESULT_FILE}")}
    assert {p: after[p] for p in before} == before  # nothing finished was changed
    assert len(after) == (1 if mode == "run" else 4)
    assert all(load_run(p)["status"] == "completed" for p in after)
    assert not list(sweep_dir.glob("*/.*.tmp"))
    if mode != "run":
        assert f"4 runs: {4 - len(before)} completed, 0 diverged, 0 failed, {len(before)} skipped" in out


def test_ctrl_c_stops_a_run_started_with_sigint_ignored(tmp_path):
    """A background job of a script inherits SIGINT ignored; normbench-run still stops on it."""
    ignoring = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731 - a preexec_fn
    exe = Path(sys.executable).with_name("normbench-run")
    proc = subprocess.Popen(
        [str(exe), *LONG, "hydra.run.dir=out"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=ignoring,
    )
    log = tmp_path / "out" / "normbench.log"
    _wait_for(lambda: log.exists() and "step 100/4000" in log.read_text())
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT and not (tmp_path / "out" / RESULT_FILE).exists()
