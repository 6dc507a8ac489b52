"""Hyper-parameter search with Hydra's Optuna sweeper: every trial is a normbench run whose value is its
validation metric (the recorded one when a finished trial is met again); what cannot combine is refused."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import QUICK_EVAL, normbench_run, normbench_run_here

from normbench.cli import objective

QUICK = ("train.budget=steps", "train.steps=20", "train.history_points=2", *QUICK_EVAL)
SEARCH = ("-m", "hydra/sweeper=optuna", "hparams_search=lr_batchnorm", "hydra.sweeper.n_trials=3", *QUICK)


def test_the_objective_is_the_validation_counterpart_of_the_main_metric():
    main = {"name": "test_error", "lower_is_better": True}
    record = {"status": "completed", "main_metric": main, "metrics": {"test_error": 0.2, "val_error": 0.25}}
    assert objective(record) == 0.25  # the test set chooses nothing
    assert objective({**record, "status": "diverged", "metrics": {}}) == 1.0  # an error's worst value
    assert objective({**record, "status": "failed", "metrics": {}}) is None  # Optuna: a failed trial
    gan = {
        "status": "completed",
        "main_metric": {"name": "fd", "lower_is_better": True},
        "metrics": {"fd": 3.0},
    }
    assert objective(gan) is None and objective(None) is None


def test_an_optuna_search_optimizes_the_runs_validation_error_and_resumes(tmp_path):
    first = normbench_run(*SEARCH, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    folder = tmp_path / "multirun" / "lr_batchnorm"
    records = [json.loads(p.read_text()) for p in folder.glob("*/result.json")]
    assert len(records) == 3
    best = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    chosen = min(records, key=lambda r: r["metrics"]["val_error"])
    assert best["best_value"] == chosen["metrics"]["val_error"]
    assert best["best_params"]["optim.lr"] == chosen["config"]["optim"]["lr"]
    again = normbench_run(*SEARCH, cwd=tmp_path)  # the same seeded trials: their records answer
    assert again.returncode == 0
    assert again.stderr.count("already holds a result") + again.stdout.count("already holds a result") == 3
    assert yaml.safe_load((folder / "optimization_results.yaml").read_text()) == best


def test_what_cannot_combine_with_optuna_is_refused_in_one_line(tmp_path):
    population = normbench_run(*SEARCH, "hydra/launcher=population", cwd=tmp_path)
    assert population.returncode == 2
    assert "hydra/launcher=population with hydra/sweeper=optuna" in population.stderr
    forgotten = normbench_run("-m", "hparams_search=lr_batchnorm", *QUICK, cwd=tmp_path)
    assert forgotten.returncode == 2
    assert "hydra.sweeper.direction: not a setting of normbench's sweeper" in forgotten.stderr
    assert "hydra/sweeper=optuna" in forgotten.stderr


@pytest.mark.parametrize(
    "setting, message",
    [  # each a traceback of the Optuna sweeper before (the first two after the search had run)
        ("n_trials=0", "hydra.sweeper.n_trials=0: must be an integer >= 1"),
        ("n_jobs=-1", "hydra.sweeper.n_jobs=-1: must be an integer >= 1"),
        (
            "direction=up",
            "hydra.sweeper.direction=up: must be minimize or maximize (a run's objective is one value",
        ),
        (
            "direction=[minimize,minimize]",
            "hydra.sweeper.direction=['minimize', 'minimize']: must be minimize or",
        ),
        ("max_failure_rate=2", "hydra.sweeper.max_failure_rate=2.0: must be a fraction in [0, 1]"),
    ],
)
def test_optuna_settings_that_cannot_search_are_refused_before_it_starts(
    setting, message, tmp_path, monkeypatch, capsys
):
    args = (*SEARCH, f"hydra.sweeper.{setting}")
    status, stderr = normbench_run_here(*args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2 and stderr.startswith(f"normbench-run: error: {message}") and stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no study folder, no trial
