"""Experiment trackers: what a run streams (CSV rows, TensorBoard events) equals its record; population
members log their own runs; a missing extra or an unknown tracker is refused before any work."""

from __future__ import annotations

import json

import pytest
from helpers import QUICK, compose_cfg, csv_rows, normbench_run_here, tracked_values, wandb_offline_history

import normbench.trackers as trackers
from normbench.config import ConfigError
from normbench.experiment.run import execute
from normbench.population.launcher import Member, train_group


def test_a_csv_tracker_holds_the_runs_history_and_final_metrics(tmp_path):
    record = execute(compose_cfg(*QUICK, "logger=csv"), tmp_path)
    assert csv_rows(tmp_path / "metrics.csv") == pytest.approx(tracked_values(record))


def test_tensorboard_events_hold_the_history(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record = execute(compose_cfg(*QUICK, "logger=tensorboard"), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("test_error")}
    assert logged == pytest.approx({p["step"]: p["test_error"] for p in record["history"]})
    assert events.Scalars("final/test_error")[0].value == pytest.approx(record["metrics"]["test_error"])


def test_each_population_member_logs_its_own_run(tmp_path):
    members = [
        Member(compose_cfg(*QUICK, "logger=csv", f"seed={s}"), tmp_path / str(s), str(tmp_path / f"{s}.log"))
        for s in (0, 1)
    ]
    train_group(members)
    for m in members:
        record = json.loads((m.out_dir / "result.json").read_text())
        assert record["env"]["population"] == 2
        assert csv_rows(m.out_dir / "metrics.csv") == pytest.approx(tracked_values(record))


def test_a_tracker_failing_after_a_population_trained_loses_no_members_record(tmp_path, monkeypatch, caplog):
    """Members log when their population ends: a tracker that fails then (a server gone meanwhile)
    stopped the launcher, and the members after the first lost their records."""

    class Gone(trackers.CsvTracker):
        def log(self, step, values):
            raise RuntimeError("the tracking server went away")

    monkeypatch.setattr(trackers, "CsvTracker", Gone)
    members = [
        Member(compose_cfg(*QUICK, "logger=csv", f"seed={s}"), tmp_path / str(s), str(tmp_path / f"{s}.log"))
        for s in (0, 1)
    ]
    train_group(members)
    for m in members:
        assert json.loads((m.out_dir / "result.json").read_text())["status"] == "completed"
        assert (
            f"logger=csv could not log the run in {m.out_dir} (its record is kept): RuntimeError: the tracking server went away"
            in caplog.text
        )


@pytest.mark.parametrize("fails_in", ["__init__", "log", "close"])
def test_a_tracker_failing_during_a_run_costs_the_run_nothing(tmp_path, monkeypatch, caplog, fails_in):
    """A run alone streams its history as it trains: a tracker that fails at its opening, at a point or at
    its end marked the trained run failed (a rerun trained it again); now the run completes with the
    record of a run without a tracker, and the error is in its log, once."""

    class Gone(trackers.CsvTracker):
        def __getattribute__(self, name):
            if name != fails_in:
                return super().__getattribute__(name)

            def gone(*args):
                raise RuntimeError("the tracking server went away")

            return gone

    def opened(run_dir):
        if fails_in == "__init__":
            raise RuntimeError("the tracking server went away")
        return Gone(run_dir)

    monkeypatch.setattr(trackers, "CsvTracker", opened)
    (tmp_path / "run").mkdir()  # Hydra makes a run's folder before the run
    record = execute(compose_cfg(*QUICK, "logger=csv"), tmp_path / "run")
    alone = execute(compose_cfg(*QUICK), tmp_path / "alone")
    assert record["status"] == "completed" and record["metrics"] == alone["metrics"]
    message = f"logger=csv could not log the run in {tmp_path / 'run'} (its record is kept): RuntimeError: the tracking server went away"
    assert caplog.text.count(message) == 1


def test_a_missing_tracker_package_is_refused_with_the_install_line(tmp_path, monkeypatch):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(
        trackers.importlib.util, "find_spec", lambda name: None if name == "tensorboard" else real(name)
    )
    with pytest.raises(
        ConfigError,
        match=r"logger=tensorboard: the tensorboard package is not installed; run: pip install 'normbench\[tensorboard\]'",
    ):
        execute(compose_cfg(*QUICK, "logger=tensorboard"), tmp_path)
    assert not (tmp_path / "result.json").exists()


@pytest.mark.parametrize(
    "store, why",
    [
        ("bogus://x", "Model registry functionality is unavailable; got unsupported URI 'bogus://x'"),
        ("sqlite:///{tmp}/no/mlflow.db", "no folder {tmp}/no for its database"),
        ("sqlite:////proc/mlflow.db", "cannot write its database in /proc (No such file or directory)"),
    ],
)
def test_an_mlflow_store_that_cannot_keep_runs_is_refused_before_any_work(
    tmp_path, monkeypatch, capsys, store, why
):
    """Each run failed on it after its data and model were built; an unopenable database only after
    MLflow's ~100 s of retries, in every run of a sweep."""
    uri = store.format(tmp=tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    status, stderr = normbench_run_here(
        "logger=mlflow", *QUICK, "hydra.run.dir=run", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys
    )
    assert status == 2 and not (tmp_path / "run").exists()
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"normbench-run: error: logger=mlflow: MLFLOW_TRACKING_URI={uri}: {why.format(tmp=tmp_path)}"
        )
    )


def test_an_unknown_tracker_exits_2_naming_the_allowed_ones(tmp_path, monkeypatch, capsys):
    status, stderr = normbench_run_here(
        "logger=comet", *QUICK, "hydra.run.dir=run", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys
    )
    assert status == 2
    assert "logger=comet: unknown; allowed: none, csv, tensorboard, mlflow, wandb" in stderr
    assert not (tmp_path / "run" / "result.json").exists()


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """No W&B account: a home without ~/.netrc, W&B's own files under tmp_path, no key in the env."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_PROJECT", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def test_wandb_without_an_account_is_refused_before_any_work_and_offline_needs_none(
    tmp_path, monkeypatch, capsys, wandb_home
):
    """Each run failed on W&B's missing key after its data and model were built (or, in a terminal,
    waited at W&B's login prompt)."""
    status, stderr = normbench_run_here(
        "logger=wandb", *QUICK, "hydra.run.dir=run", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys
    )
    assert status == 2 and not (tmp_path / "run").exists()
    assert stderr.strip().splitlines()[-1] == (
        "normbench-run: error: logger=wandb: no W&B API key for api.wandb.ai (WANDB_API_KEY, or the ~/.netrc "
        "entry `wandb login` writes); log in, or set WANDB_MODE=offline to keep each run's W&B files in its "
        "folder for `wandb sync`"
    )
    (wandb_home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    assert trackers.logger_problem("wandb") is None  # `wandb login` done
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert "no W&B API key for wandb.example.org" in trackers.logger_problem("wandb")  # another host's
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert trackers.logger_problem("wandb") is None
    monkeypatch.setenv("WANDB_MODE", "ofline")  # W&B's settings refuse it in every run
    assert trackers.logger_problem("wandb") == (
        "logger=wandb: WANDB_MODE=ofline: must be one of online, offline, shared, disabled, dryrun, run"
    )


def test_a_wandb_run_is_the_config_hash_and_holds_the_history_and_final_metrics(
    tmp_path, monkeypatch, wandb_home
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = (*QUICK, "logger=wandb", "norm=switchnorm", "task=mnist1d_cnn", "sweep.name=demo/cnn")
    record = execute(compose_cfg(*overrides), tmp_path / "run")
    runs, logged = wandb_offline_history(tmp_path / "run")
    assert runs == {(record["config_hash"], "demo-cnn", "demo/cnn")}  # W&B refuses '/' in a project
    assert {k: logged[k] for k in tracked_values(record)} == pytest.approx(tracked_values(record))
    last = {k: v for (step, k), v in logged.items() if step == record["steps"] and k.startswith("layers/")}
    assert last and last == pytest.approx(trackers.layer_values(record["layers"]))  # the norms' own reports
    monkeypatch.setenv("WANDB_PROJECT", "shared")
    again = execute(compose_cfg(*overrides, "runtime.force=true"), tmp_path / "run")
    assert wandb_offline_history(tmp_path / "run")[0] == {
        (again["config_hash"], "demo-cnn", "demo/cnn"),  # the first, and the same run continued
        (again["config_hash"], "shared", "demo/cnn"),
    }


def test_each_population_member_is_its_own_wandb_run(tmp_path, monkeypatch, wandb_home):
    monkeypatch.setenv("WANDB_MODE", "offline")
    members = [
        Member(
            compose_cfg(*QUICK, "logger=wandb", f"seed={s}"), tmp_path / str(s), str(tmp_path / f"{s}.log")
        )
        for s in (0, 1)
    ]
    train_group(members)
    for m in members:
        record = json.loads((m.out_dir / "result.json").read_text())
        runs, logged = wandb_offline_history(m.out_dir)
        assert runs == {(record["config_hash"], "default", "default")}
        assert {k: logged[k] for k in tracked_values(record)} == pytest.approx(tracked_values(record))


def test_mlflow_keeps_one_run_per_config_hash_found_again_by_its_tag(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = compose_cfg(*QUICK, "logger=mlflow", "sweep.name=demo")
    record = execute(cfg, tmp_path / "run")
    again = execute(
        compose_cfg(*QUICK, "logger=mlflow", "sweep.name=demo", "runtime.force=true"), tmp_path / "run"
    )
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("demo")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["normbench.config_hash"] == record["config_hash"]
    logged = client.get_metric_history(runs[0].info.run_id, "test_error")
    expected = [(p["step"], p["test_error"]) for p in record["history"] + again["history"]]
    got = sorted((m.step, m.value) for m in logged)
    assert [s for s, _ in got] == [s for s, _ in sorted(expected)]
    assert [v for _, v in got] == pytest.approx([v for _, v in sorted(expected)])
    assert runs[0].data.params["norm.name"] == "batchnorm"


def test_the_norms_per_layer_reports_are_streamed_with_each_point(tmp_path):
    record = execute(compose_cfg(*QUICK, "logger=csv", "norm=switchnorm", "task=mnist1d_cnn"), tmp_path)
    rows = csv_rows(tmp_path / "metrics.csv")
    layer_keys = {name for step, name in rows if name.startswith("layers/")}
    assert layer_keys  # SwitchNorm reports its mixture weights per layer
    for point in record["history"]:
        assert {
            name for step, name in rows if step == point["step"] and name.startswith("layers/")
        } == layer_keys


def test_a_run_alone_trained_as_a_population_of_one_writes_and_logs_its_own_record(tmp_path, monkeypatch):
    """On a GPU a run alone trains as a population of one (its step captured): made to here on the CPU,
    it writes its result.json, logs its history to its tracker and leaves no checkpoint behind."""
    import normbench.experiment.run as run

    monkeypatch.setattr(run, "trains_captured_alone", lambda cfg, runtime, processes: True)
    cfg = compose_cfg(*QUICK, "logger=csv", "train.checkpoint_every=5")
    record = execute(cfg, tmp_path)
    assert record["env"]["population"] == 1 and record["status"] == "completed"
    assert json.loads((tmp_path / "result.json").read_text()) == record
    assert csv_rows(tmp_path / "metrics.csv") == pytest.approx(tracked_values(record))
    assert not (tmp_path / "checkpoint.pt").exists()
