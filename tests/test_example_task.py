"""The example task package, installed like a third-party package, adds a task end to end: the registry
lists it, its preset joins the config search path, a sweep trains it, and a saved model's error is the
task's own formula."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import QUICK_EVAL, ROOT, installed_env, run_python

EXAMPLE = ROOT / "examples" / "normbench-task-example"
STEPS = ("train.budget=steps", "train.steps=6", "train.history_points=2", *QUICK_EVAL)


@pytest.fixture(scope="module")
def task_env(tmp_path_factory) -> dict[str, str]:
    return installed_env(EXAMPLE, tmp_path_factory.mktemp("site"))


def test_the_task_is_listed_and_its_preset_is_a_task_choice(task_env, tmp_path):
    proc = run_python(["-c", "import normbench; print(normbench.available_tasks())"], task_env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "'autoencoder'" in proc.stdout and "'classification'" in proc.stdout
    helped = run_python(["-m", "normbench", "--help"], task_env, tmp_path)
    assert "mnist1d_autoencoder" in helped.stdout and "mnist1d_mlp" in helped.stdout


def test_a_sweep_trains_the_task_and_its_error_is_the_reconstruction_error(task_env, tmp_path):
    proc = run_python(
        ["-m", "normbench", "-m", "task=mnist1d_autoencoder", "norm=batchnorm,layernorm", "task.options.code=4",
         "train.save_model=true", "sweep.root=runs", "sweep.name=ae", *STEPS],
        task_env,
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "runs" / "ae").glob("*/result.json"))
    records = [json.loads(p.read_text()) for p in runs]
    assert sorted(r["config"]["norm"]["name"] for r in records) == ["batchnorm", "layernorm"]
    assert all(r["status"] == "completed" and r["main_metric"]["error_is_fraction"] is False for r in records)
    check = (  # the saved model rebuilt through the registry; the error by its formula, independently
        "import sys, json, torch; from normbench import load_model; "
        "from normbench.experiment.build import prepare_data; from normbench.results import load_run; "
        "from omegaconf import OmegaConf; from normbench.schema import Config; "
        "run = sys.argv[1]; record = load_run(run); model = load_model(run); "
        "data = prepare_data(OmegaConf.merge(OmegaConf.structured(Config), record['config'])); "
        "x = data.x_test.flatten(1); "
        "print(json.dumps([float(((model(data.x_test) - x) ** 2).mean()), record['metrics']['test_error']]))"
    )
    for path in runs:
        out = run_python(["-c", check, str(path.parent)], task_env, tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        formula, recorded = json.loads(out.stdout.strip().splitlines()[-1])
        assert recorded == pytest.approx(formula, rel=1e-5) and 0 < recorded < 10


def test_the_example_leaves_the_classification_tasks_as_they_were(task_env, tmp_path):
    proc = run_python(
        ["-m", "normbench", "task=mnist1d_mlp", "hydra.run.dir=out", *STEPS], task_env, tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(Path(tmp_path / "out" / "result.json").read_text())
    assert record["status"] == "completed" and "error_is_fraction" not in record["main_metric"]


def test_the_curve_study_runs_on_the_task_in_its_own_units(task_env, tmp_path):
    """``--task`` takes an installed plugin's preset; its squared errors are reported as they are (not as
    percent), each cell's mean being its selected runs' mean test error."""
    venv_bin = str(Path(sys.executable).parent)
    env = {**task_env, "PATH": f"{venv_bin}{os.pathsep}{task_env['PATH']}"}
    out = tmp_path / "curve"
    script = str(ROOT / "scripts" / "small_batch_study.sh")
    proc = subprocess.run(
        ["bash", script, "--task", "mnist1d_autoencoder", "--smoke", "--out", str(out), "--jobs", "1"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "test_error (%)" not in report and "(paired over seeds, test_error, exploratory)" in report
    curve = pd.read_csv(out / "curve_Which-norm-at-my-batch-size.csv")
    runs = pd.read_csv(out / "runs.csv")
    chosen = pd.read_csv(out / "selection.csv").query("chosen")
    assert set(curve["task"]) == {"mnist1d_autoencoder"} and len(curve) == len(chosen) == 4
    for row in curve.itertuples():
        lr = chosen.query("norm == @row.norm and batch_size == @row.batch_size")["optim.lr"].item()
        cell = runs.query("norm == @row.norm and batch_size == @row.batch_size and lr.notna()")
        cell = cell[cell["optim.lr"] == lr]
        assert row.mean == pytest.approx(cell["test_error"].mean(), rel=1e-5) and 0.05 < row.mean < 5
        assert f"{row.mean:.1f} [{row.low:.1f}, {row.high:.1f}]" in report  # unscaled
