"""Real multiruns in a subprocess: launchers, hash-named folders, resume, grown grids, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import QUICK, QUICK_EVAL, compose_cfg, exploding_plugin_env, normbench_run, normbench_run_here

from normbench.results import load_run

STEPS = ("train.budget=steps", "train.steps=3", "train.history_points=1", *QUICK_EVAL)


def sweep(tmp: Path, *args: str, launcher: str = "joblib"):
    proc = normbench_run("-m", *args, *STEPS, f"sweep.root={tmp}", f"hydra/launcher={launcher}", cwd=tmp)
    return proc


def records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: load_run(p) for p in sorted(sweep_dir.glob("*/result.json"))}


def test_joblib_sweep_writes_one_hash_named_folder_per_run(tmp_path):
    proc = sweep(tmp_path, "norm=batchnorm,groupnorm", "batch_size=8,16", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stderr
    found = records(tmp_path / "default")
    assert len(found) == 4
    assert all(folder == r["config_hash"] for folder, r in found.items())
    assert {(r["config"]["norm"]["name"], r["config"]["batch_size"]) for r in found.values()} == {
        ("batchnorm", 8),
        ("batchnorm", 16),
        ("groupnorm", 8),
        ("groupnorm", 16),
    }
    assert all(r["status"] == "completed" and r["env"]["threads"] == 1 for r in found.values())
    assert "4 runs: 4 completed, 0 diverged, 0 failed, 0 skipped" in proc.stdout


def test_rerun_skips_results_reruns_unfinished_and_force_reruns(tmp_path):
    """The sweeper's resume, whatever the launcher (in-process here: the joblib launcher's reruns are
    test_faults.py's, after a kill -9)."""
    grid = ("norm=batchnorm,identity", "batch_size=8,16")
    assert sweep(tmp_path, *grid, launcher="basic").returncode == 0
    first = records(tmp_path / "default")
    killed = sorted(first)[0]
    (tmp_path / "default" / killed / "result.json").unlink()  # as a run killed before its record
    proc = sweep(tmp_path, *grid, launcher="basic")
    assert proc.returncode == 0, proc.stderr
    assert "4 runs: 1 completed, 0 diverged, 0 failed, 3 skipped" in proc.stdout
    second = records(tmp_path / "default")
    assert set(second) == set(first)
    for folder in first:
        if folder != killed:  # untouched: the same record, not retrained
            assert second[folder]["finished_at"] == first[folder]["finished_at"]
    proc = sweep(tmp_path, "norm=batchnorm", "batch_size=8", "runtime.force=true", launcher="basic")
    assert "1 runs: 1 completed, 0 diverged, 0 failed, 0 skipped" in proc.stdout
    assert len(records(tmp_path / "default")) == 4


@pytest.mark.parametrize("launcher", ["joblib", "population"])
def test_a_grid_point_repeating_an_earlier_ones_config_trains_once(tmp_path, launcher):
    """seed=0,0: one config, one folder; trained twice it would be trained at once into the same folder
    (by two parallel jobs, or as two members of one population)."""
    proc = sweep(tmp_path, "seed=0,0,1", "runtime.threads=1", launcher=launcher)
    assert proc.returncode == 0, proc.stderr
    assert "3 runs: 2 completed, 0 diverged, 0 failed, 0 skipped, 0 config error, 1 repeated" in proc.stdout
    assert "1 grid point(s) repeat an earlier one's config (e.g. seed=0 " in proc.stdout
    assert sorted(r["config"]["seed"] for r in records(tmp_path / "default").values()) == [0, 1]


def test_grown_grid_adds_runs_without_touching_old_ones(tmp_path):
    assert sweep(tmp_path, "norm=layernorm", "seed=0", launcher="basic").returncode == 0
    old = records(tmp_path / "default")
    proc = sweep(tmp_path, "norm=layernorm", "seed=0,1,2", launcher="basic")
    assert "3 runs: 2 completed, 0 diverged, 0 failed, 1 skipped" in proc.stdout
    grown = records(tmp_path / "default")
    assert len(grown) == 3 and sorted(r["config"]["seed"] for r in grown.values()) == [0, 1, 2]
    for folder, r in old.items():
        assert grown[folder]["finished_at"] == r["finished_at"]


def test_failed_and_misconfigured_jobs_do_not_stop_the_others(tmp_path):
    # explodingnorm (a plugin package's) raises in its forward; instancenorm cannot take (N, C) features
    env = exploding_plugin_env(tmp_path / "site")
    proc = normbench_run(
        "-m",
        "norm=batchnorm,explodingnorm,instancenorm",
        "batch_size=8",
        *STEPS,
        f"sweep.root={tmp_path}",
        "hydra/launcher=joblib",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 1  # configuration errors make the sweep exit non-zero, after the others ran
    assert "3 runs: 1 completed, 0 diverged, 1 failed, 0 skipped, 1 config error" in proc.stdout
    found = records(tmp_path / "default")
    statuses = sorted((r["config"]["norm"]["name"], r["status"]) for r in found.values())
    assert statuses == [("batchnorm", "completed"), ("explodingnorm", "failed")]
    failed = next(folder for folder, r in found.items() if r["status"] == "failed")
    assert found[failed]["error"] == "RuntimeError: plugin exploded"
    assert f"failed, log: {tmp_path / 'default' / failed / 'normbench.log'}" in proc.stdout
    assert "Traceback" in (tmp_path / "default" / failed / "normbench.log").read_text()
    assert (
        proc.stdout.count("  configuration error (") == 1
        and "needs at least 2 spatial positions" in proc.stdout
    )


def test_submitit_local_launcher(tmp_path):
    proc = sweep(tmp_path, "norm=groupnorm,identity", launcher="submitit_local")
    assert proc.returncode == 0, proc.stderr
    found = records(tmp_path / "default")
    assert sorted(r["config"]["norm"]["name"] for r in found.values()) == ["groupnorm", "identity"]
    assert all(folder == r["config_hash"] for folder, r in found.items())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("norm=batchnorm,foo", "norm=foo: unknown norm"),
        ("batch_size=8,abc", "batch_size=abc: Value 'abc' of type 'str' could not be converted to Integer"),
        ("optim.lr=0.05,-1", "optim.lr=-1.0: must be a number in (0, 1e6] (sweep job optim.lr=-1 "),
        ("optim.lr=0.05,nan", "optim.lr=nan: must be a number in (0, 1e6] (sweep job optim.lr=nan "),
        ("eval.precise_bn_samples=10,0", "eval.precise_bn_samples=0: must be an integer >= 2"),
        ("hydra.launcher.n_jobs=0", "hydra.launcher.n_jobs=0: must be an integer >= 1 (or, for joblib"),
    ],
)
def test_bad_value_anywhere_in_the_grid_stops_the_sweep_before_any_job(
    tmp_path, override, message, monkeypatch, capsys
):
    args = ("-m", override, f"sweep.root={tmp_path}", "hydra/launcher=joblib")
    status, stderr = normbench_run_here(*args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2
    assert len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"normbench-run: error: {message}")
    assert list(tmp_path.iterdir()) == []  # not even the sweep folder


def test_experiment_preset_defines_a_grid():
    from hydra import compose, initialize_config_dir

    from normbench.cli import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=norms_x_batch"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.params.batch_size == "2,4,8,16,32"
    assert cfg.sweep.name == "norms_x_batch" and cfg.task.name == "mnist1d_mlp"


def test_hash_ignores_paths_and_runtime_settings():
    from normbench.experiment.identity import run_identity

    base = run_identity(compose_cfg(*QUICK))[1]
    assert run_identity(compose_cfg(*QUICK, "sweep.root=/elsewhere", "runtime.threads=2"))[1] == base
    assert run_identity(compose_cfg(*QUICK, "seed=1"))[1] != base
    identity = run_identity(compose_cfg(*QUICK))[0]
    assert "runtime" not in identity and "sweep" not in identity
    assert json.dumps(identity, sort_keys=True)  # plain JSON: enums as strings


def test_a_sweep_counts_only_its_own_jobs_visits(tmp_path, monkeypatch):
    """Two sweeps sharing a folder: the visit marker another sweep's job left there (it trained the
    run) is not this sweep's: here the run counts as finished elsewhere, skipped."""
    from normbench.experiment.identity import run_identity
    from normbench.experiment.run import execute
    from normbench.sweep import SWEEP_TOKEN, Job, ResumingSweeper, mark_visit

    cfg = compose_cfg("norm=identity", *STEPS)
    folder = tmp_path / "run"
    execute(cfg, folder)
    monkeypatch.setenv(SWEEP_TOKEN, "sweep-a")
    mark_visit(folder, "completed")
    job = Job([], folder, run_identity(cfg)[1], False)
    assert ResumingSweeper._outcome(job, None, 0.0, "sweep-a")["outcome"] == "completed"
    assert ResumingSweeper._outcome(job, None, 0.0, "sweep-b")["outcome"] == "skipped"
