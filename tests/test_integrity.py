"""Records and reports you can trust: one identity, every fault a record, reports that survive bad
files, files others can read, one trainer per run folder. Each test stems from a defect seen before."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import (
    QUICK,
    QUICK_EVAL,
    ROOT,
    compose_cfg,
    exploding_plugin_env,
    normbench_run,
    normbench_run_here,
    registered_plugin,
)
from torch import nn

from normbench.checkpoint import CHECKPOINT_FILE, Checkpoint
from normbench.experiment.run import execute
from normbench.report import load_runs
from normbench.report.build import build_report
from normbench.report.tables import cell_columns, summarize
from normbench.results import (
    FILE_MODE,
    RESULT_FILE,
    InvalidRecord,
    load_run,
    run_lock,
    write_json_atomic,
)

STEPS = ("train.budget=steps", "train.steps=3", "train.history_points=1", *QUICK_EVAL)


# -- one identity ------------------------------------------------------------------------------------


def test_a_single_run_does_not_replace_another_configs_record_or_checkpoint_in_its_folder(
    tmp_path, monkeypatch, capsys
):
    """Two runs given one hydra.run.dir (or the default outputs/DATE/TIME, started in the same second):
    the second replaced the first's record without a word."""
    folder = tmp_path / "run"
    execute(compose_cfg("norm=batchnorm", "seed=3", *STEPS), folder)
    first = (folder / RESULT_FILE).read_text()
    base = ("norm=batchnorm", *STEPS, f"hydra.run.dir={folder}")
    code, err = normbench_run_here(*base, "seed=4", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"normbench-run: error: {folder}: holds the record of another run (config ")
    )
    assert "task=mnist1d_mlp norm=batchnorm batch_size=32 seed=3), which this one would replace" in err
    assert (folder / RESULT_FILE).read_text() == first
    code, _ = normbench_run_here(*base, "seed=3", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and (folder / RESULT_FILE).read_text() == first  # its own record: skipped
    forced = ("seed=4", "runtime.force=true")
    code, _ = normbench_run_here(*base, *forced, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and load_run(folder)["config"]["seed"] == 4
    killed = tmp_path / "killed"  # a run killed mid-way left its checkpoint and no record
    Checkpoint(killed / CHECKPOINT_FILE, 10, "0123456789abcdef").save({"step": 20})
    again = ("norm=batchnorm", *STEPS, f"hydra.run.dir={killed}")
    code, err = normbench_run_here(*again, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"normbench-run: error: {killed}: holds the checkpoint of another run (config 0123456789abcdef), "
        "which this one would replace; give this run a folder of its own (hydra.run.dir), or "
        "runtime.force=true to replace it"
    )
    assert Checkpoint(killed / CHECKPOINT_FILE, 10, "0123456789abcdef").load()["step"] == 20


def test_committed_sweeps_loaded_together_never_mix_budgets_in_a_cell():
    """reports/example (4 epochs, seeds 0-1) and the study (15 epochs, seeds 0-4) share task, norm,
    batch size and lr; their runs differ in train.epochs, so they are different cells."""
    runs = load_runs(ROOT / "reports/example/records.jsonl", ROOT / "reports/small_batch_v1/records.jsonl")
    assert "experiment" not in runs.columns  # no column from command-line strings
    assert "train.epochs" in cell_columns(runs) and "seed" not in cell_columns(runs)
    summary = summarize(runs)
    cell = summary[
        (summary["task"] == "mnist1d_cnn")
        & (summary["norm"] == "batchnorm")
        & (summary["batch_size"] == 32)
        & (summary["optim.lr"] == 0.05)
        & (summary["data.sampler"] == "iid")
        & (summary["task.model.init_scale"] == 1.0)  # filled in for runs that predate the key
    ]
    assert sorted(zip(cell["train.epochs"], cell["n"], strict=True)) == [(4, 2), (15, 5)]


def test_any_differing_config_value_splits_cells(tmp_path):
    for lr in (0.05, 0.1):
        execute(compose_cfg("norm=identity", f"optim.lr={lr}", *QUICK), tmp_path / str(lr))
    runs = load_runs(tmp_path)
    assert "optim.lr" in cell_columns(runs)
    assert sorted(summarize(runs)["optim.lr"]) == [0.05, 0.1]


# -- every fault is a record ---------------------------------------------------------------------------


class _Broken(nn.Module):
    def __init__(self, num_channels: int, fault: str = "raise") -> None:
        super().__init__()
        self.fault = fault

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fault == "raise":
            raise RuntimeError("plugin exploded")
        if self.fault == "shape":
            return x[:, :1]
        raise SystemExit(3)


@pytest.fixture
def broken_plugin():
    with registered_plugin("brokennorm", _Broken, batch_dependent=False) as name:
        yield name


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("raise", "RuntimeError: plugin exploded"),
        ("shape", "PluginError: norm plugin _Broken returned (2, 1) for an input of shape (2, 256)"),
        ("exit", "SystemExit: 3"),
    ],
)
def test_a_broken_plugin_gives_a_failed_record(tmp_path, broken_plugin, fault, message):
    cfg = compose_cfg(*QUICK)
    cfg.norm = {"name": broken_plugin, "fault": fault}
    record = execute(cfg, tmp_path)
    assert record["status"] == "failed" and record["error"] == message
    assert load_run(tmp_path)["error"] == message


def test_failure_during_evaluation_keeps_the_trained_run(tmp_path, monkeypatch):
    from normbench.experiment import record as run

    def broken(*args):
        raise KeyError("precise_bn")

    monkeypatch.setattr(run, "final_metrics", broken)
    execute(compose_cfg("norm=batchnorm", *QUICK), tmp_path)
    record = load_run(tmp_path)
    assert record["status"] == "failed" and record["error"] == "KeyError: 'precise_bn'"
    assert record["steps"] == 4 and len(record["history"]) == 2  # what training produced is kept


def test_non_finite_values_never_break_the_writer(tmp_path):
    write_json_atomic(tmp_path / "x.json", {"a": math.nan, "b": [math.inf, 1.0], "c": {"d": -math.inf}})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.0], "c": {"d": None}}


def test_failed_jobs_still_give_the_summary_and_a_nonzero_exit(tmp_path):
    proc = normbench_run(
        # explodingnorm (a plugin package's) raises in its forward; batchnorm trains
        "-m",
        "norm=batchnorm,explodingnorm",
        *STEPS,
        f"sweep.root={tmp_path}",
        cwd=tmp_path,
        env=exploding_plugin_env(tmp_path / "site"),
    )
    assert proc.returncode == 1
    summary = (tmp_path / "default" / "summary.txt").read_text()
    assert "2 runs: 1 completed, 0 diverged, 1 failed, 0 skipped" in summary
    assert "RuntimeError: plugin exploded" in summary  # the summary names the failure
    assert summary.strip() in proc.stdout


# -- reports survive bad files --------------------------------------------------------------------------

BAD_RECORDS = {
    "choices_list": lambda r: {**r, "choices": []},
    "metric_string": lambda r: {**r, "metrics": {**r["metrics"], "test_error": "abc"}},
    "history_string": lambda r: {**r, "history": "x"},
    "batch_size_string": lambda r: {**r, "config": {**r["config"], "batch_size": "abc"}},
    "batch_size_400_digits": lambda r: {**r, "config": {**r["config"], "batch_size": int("9" * 400)}},
    "error_above_one": lambda r: {**r, "metrics": {**r["metrics"], "test_error": 1.5}},
    "unknown_status": lambda r: {**r, "status": "done"},
    "error_boolean": lambda r: {**r, "metrics": {**r["metrics"], "test_error": True}},
    "history_loss_boolean": lambda r: {**r, "history": [{**r["history"][0], "train_loss": False}]},
}
BAD_TEXTS = {  # JSON literals Python's json accepts but a record must not hold
    "nan": '"test_error": NaN',
    "infinity": '"test_error": Infinity',
    "overflow": '"test_error": 1e999',
}


@pytest.fixture(scope="module")
def good_record(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("good")
    return execute(compose_cfg("norm=identity", *QUICK), out)


def test_report_skips_each_bad_file_once_with_its_reason(tmp_path, good_record, capsys):
    sweep = tmp_path / "sweep"
    write_json_atomic(sweep / "good" / RESULT_FILE, good_record)
    for name, corrupt in BAD_RECORDS.items():
        write_json_atomic(sweep / name / RESULT_FILE, {**corrupt(good_record), "config_hash": name})
    text = json.dumps({**good_record, "config_hash": "t"})
    for name, literal in BAD_TEXTS.items():
        (sweep / name).mkdir()
        (sweep / name / RESULT_FILE).write_text(
            text.replace(f'"test_error": {good_record["metrics"]["test_error"]}', literal)
        )
    (sweep / "devzero").mkdir()
    (sweep / "devzero" / RESULT_FILE).symlink_to("/dev/zero")
    (sweep / "fifo").mkdir()
    os.mkfifo(sweep / "fifo" / RESULT_FILE)
    (sweep / "huge").mkdir()
    with open(sweep / "huge" / RESULT_FILE, "wb") as f:
        f.truncate(17 * 2**20)
    (sweep / "nested").mkdir()  # ~200 KB of [[[...]]]: deeper than the parser's recursion limit
    (sweep / "nested" / RESULT_FILE).write_text("[" * 100_000 + "]" * 100_000)
    (sweep / "dangling").mkdir()
    (sweep / "dangling" / RESULT_FILE).symlink_to(tmp_path / "nowhere.json")
    (sweep / "selfloop").mkdir()
    (sweep / "selfloop" / RESULT_FILE).symlink_to(RESULT_FILE)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "normbench-report"), str(sweep), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    bad = [*BAD_RECORDS, *BAD_TEXTS, "devzero", "fifo", "huge", "nested", "dangling", "selfloop"]
    for name in bad:  # one warning per file, naming it
        assert proc.stderr.count(str(sweep / name / RESULT_FILE)) == 1, name
    reasons = {
        "choices_list": "choices is not an object",
        "metric_string": "metric test_error='abc' is not a finite number",
        "history_string": "history is not a list of objects",
        "batch_size_string": "config.batch_size='abc' is not a positive integer",
        "batch_size_400_digits": "is not a positive integer",
        "error_above_one": "metric test_error=1.5 is outside [0, 1]",
        "unknown_status": "status 'done' is not one of",
        "nan": "NaN is not a JSON number",
        "infinity": "Infinity is not a JSON number",
        "overflow": "metric test_error=inf is not a finite number",
        "devzero": "not a regular file",
        "fifo": "not a regular file",
        "huge": "bytes, more than the",
        "error_boolean": "metric test_error=true is a boolean, not a number",
        "history_loss_boolean": "history: metric train_loss=false is a boolean, not a number",
        "nested": "JSON nested too deeply",
        "dangling": "No such file or directory",
        "selfloop": "Too many levels of symbolic links",
    }
    for name, reason in reasons.items():
        line = next(line for line in proc.stderr.splitlines() if f"/{name}/" in line)
        assert reason in line, (name, line)
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert list(runs["config_hash"]) == [good_record["config_hash"]]
    report = (tmp_path / "out" / "report.md").read_text()
    assert all(str(sweep / n / RESULT_FILE) in report for n in bad)


def test_a_failing_report_leaves_the_previous_one_whole(tmp_path, good_record, monkeypatch):
    sweep, out = tmp_path / "sweep", tmp_path / "out"
    write_json_atomic(sweep / "a" / RESULT_FILE, good_record)
    build_report([sweep], out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_json_atomic(
        sweep / "b" / RESULT_FILE,
        {**good_record, "config_hash": "other", "config": {**good_record["config"], "seed": 1}},
    )

    from normbench.report import build

    def crash(*args, **kwargs):
        raise RuntimeError("figure backend died")

    monkeypatch.setattr(build, "with_reference_delta", crash)  # after runs.csv is staged
    with pytest.raises(RuntimeError, match="figure backend died"):
        build_report([sweep], out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # no half-written table, figure or staging folder


# -- files, temporaries and concurrent sweeps -----------------------------------------------------------


def test_records_respect_the_umask(tmp_path, good_record):
    write_json_atomic(tmp_path / RESULT_FILE, good_record)
    mode = stat.S_IMODE((tmp_path / RESULT_FILE).stat().st_mode)
    assert mode == FILE_MODE == 0o666 & ~_umask()
    assert mode & stat.S_IRGRP  # with the usual 022 umask: group and others can read


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_stale_temporaries_are_removed_and_a_held_run_is_not_trained_twice(tmp_path):
    args = ("-m", "norm=identity,layernorm", *STEPS, f"sweep.root={tmp_path}")
    assert normbench_run(*args, cwd=tmp_path).returncode == 0
    folders = sorted((tmp_path / "default").glob("*/"))
    held, other = folders
    for folder in folders:  # as a writer killed mid-write, and a grid to rerun
        (folder / ".result.json.abc123.tmp").write_text('{"half')
        (folder / RESULT_FILE).unlink()
    with run_lock(held) as acquired:  # another live sweep is training this run
        assert acquired
        proc = normbench_run(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (
        "2 runs: 1 completed, 0 diverged, 0 failed, 0 skipped, 0 config error, 1 running elsewhere"
        in proc.stdout
    )
    assert not (held / RESULT_FILE).exists() and (held / ".result.json.abc123.tmp").exists()
    assert load_run(other)["status"] == "completed" and not list(other.glob("*.tmp"))


def test_a_dead_writers_temporary_in_a_finished_run_is_removed_by_the_next_sweep(tmp_path):
    """A process killed while marking a finished run's visit left its half-written file there (seen
    after a kill -9 of a population sweep); the sweeper, which skips that run without launching it,
    removes it - but never the file of a live writer, another host's, or one it cannot attribute."""
    import socket
    import subprocess

    ended = subprocess.Popen(["true"])
    ended.wait()  # a process of this host that has ended
    args = ("-m", "norm=identity", *STEPS, f"sweep.root={tmp_path}")
    assert normbench_run(*args, cwd=tmp_path).returncode == 0
    (folder,) = (tmp_path / "default").glob("*/")
    host = socket.gethostname()
    dead = folder / f".visit.json.@{host}-{ended.pid}.k2x9q1zz.tmp"
    kept = [
        folder / f".visit.json.@{host}-{os.getpid()}.a8b7c6d5.tmp",  # alive: this test
        folder / f".visit.json.@{host}x-{ended.pid}.a8b7c6d5.tmp",  # another host
        folder / f".visit.json.@x.{host}-{ended.pid}.a8b7c6d5.tmp",  # another host, named ending in ours
        folder / ".visit.json.a8b7c6d5.tmp",  # no writer named
    ]
    for path in (dead, *kept):
        path.write_text('{"half')
    proc = normbench_run(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 1 runs already finished, skipped" in proc.stdout + proc.stderr
    assert not dead.exists() and all(path.exists() for path in kept)
    assert load_run(folder)["status"] == "completed"


def test_an_atomic_write_names_its_writer_in_its_temporary(tmp_path):
    import socket

    from normbench.results import atomic_file

    with atomic_file(tmp_path / "x.json") as f:
        (temporary,) = tmp_path.glob(".x.json.*.tmp")
        f.write("{}")
    assert temporary.name.startswith(f".x.json.@{socket.gethostname()}-{os.getpid()}.")
    assert (tmp_path / "x.json").read_text() == "{}" and not temporary.exists()


def test_finished_sweep_resumes_without_launching_a_job(tmp_path):
    args = ("-m", "norm=identity,layernorm", "seed=0,1", *STEPS, f"sweep.root={tmp_path}")
    assert normbench_run(*args, cwd=tmp_path).returncode == 0
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "default").rglob("*") if p.is_file()}
    proc = normbench_run(*args, cwd=tmp_path)
    assert proc.returncode == 0
    log = proc.stdout + proc.stderr
    assert "4 of 4 runs already finished, skipped" in log
    assert "Launching" not in log and "skipped: " not in log  # one line, not one a run
    for path, mtime in stamps.items():
        if path.name not in ("multirun.yaml", "summary.txt"):
            assert path.stat().st_mtime_ns == mtime, path


def test_committed_records_hold_no_machine_paths():
    for path in ROOT.glob("reports/**/" + RESULT_FILE):
        text = path.read_text()
        assert str(ROOT) not in text and "/tmp/" not in text and "/home/" not in text, path


def test_invalid_record_names_file_and_reason(tmp_path):
    (tmp_path / RESULT_FILE).write_text("{}")
    with pytest.raises(InvalidRecord, match=rf"{tmp_path / RESULT_FILE}: run record lacks schema_version"):
        load_run(tmp_path)
    shutil.rmtree(tmp_path)


def test_evonorm_b0_running_variance_gets_precise_bn(tmp_path):
    """EvoNorm-B0 keeps a running variance and no running mean; the registry's running_stats flag,
    not torch's attribute pair, decides which layers PreciseBN re-estimates."""
    from normbench.evaluate import precise_bn, stat_modules
    from normbench.experiment.build import model_and_norms
    from normbench.tasks import load_dataset

    cfg = compose_cfg("task=mnist1d_cnn", "norm=evonorm_b0", "batch_size=8", *QUICK)
    model, norms = model_and_norms(cfg, load_dataset("mnist1d"))
    assert len(stat_modules(model)) == len(norms) == 3
    x = load_dataset("mnist1d").x_train[:64]
    twin = precise_bn(model, x, 8, 64, torch.Generator().manual_seed(0))
    # the first layer's input does not depend on batch statistics: its pooled unbiased variance
    inputs = []
    handle = norms[0].register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()))
    with torch.no_grad():
        model.train()(x)
    handle.remove()
    expected = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1).double().var(1)
    got = stat_modules(twin)[next(iter(stat_modules(model)))].running_var.double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    record = execute(cfg, tmp_path)
    assert {"test_error_precise_bn", "running_var_rel_l2"} <= set(record["metrics"])
    assert "running_mean_rel_l2" not in record["metrics"]


def test_a_hostile_result_file_in_a_finished_sweep_is_retrained_not_a_crash(tmp_path):
    """A deeply nested JSON file in place of one run's result.json: the rerun trains that run again
    (the file holds no result) and skips the others."""
    args = ("-m", "norm=identity", "seed=0,1", *STEPS, f"sweep.root={tmp_path}")
    assert normbench_run(*args, cwd=tmp_path).returncode == 0
    victim, other = sorted((tmp_path / "default").glob(f"*/{RESULT_FILE}"))
    victim.write_text("[" * 100_000 + "]" * 100_000)
    proc = normbench_run(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 runs: 1 completed, 0 diverged, 0 failed, 1 skipped" in proc.stdout
    assert load_run(victim)["status"] == "completed" and load_run(other)["status"] == "completed"
