"""Experiment trackers (``logger=csv|tensorboard|mlflow|wandb|none``): a run's losses, metrics and its
norms' reported statistics, streamed as it trains (a population's members, and the runs of a task with
its own loop, the GAN: each its history once its record is written).

A run is identified by its config hash, so a resumed or relaunched run logs into the same run:
``metrics.csv`` (``step,name,value`` rows, appended) and ``tensorboard/`` (event files; ``tensorboard
--logdir multirun/SWEEP`` shows every run of a sweep) live in the run's folder, which is named by the
hash; MLflow, which chooses its own run ids, finds the run again by its ``normbench.config_hash`` tag
(experiment: the sweep's name; store: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the
working directory); a Weights & Biases run's id is the hash (project: ``$WANDB_PROJECT``, else the
sweep's name; group: the sweep's name; with ``WANDB_MODE=offline`` its files stay in the run's folder
for ``wandb sync``).
Nothing needs a server. TensorBoard, MLflow and W&B are optional extras; asking for a tracker whose
package is missing is refused before any work with the ``pip install`` to run, and so is an MLflow
store that cannot keep runs (a scheme MLflow lacks, a database file it cannot write) and W&B online
without an API key (each run would fail on it, or wait at its login prompt). A tracker is a copy of
what ``result.json`` records: one that fails later (a server gone meanwhile) is an error in the run's
log, logs nothing more, and costs the run nothing.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import netrc
import os
import re
import time
import urllib.parse
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from normbench.results import write_problem

LOGGERS = ("none", "csv", "tensorboard", "mlflow", "wandb")
# logger -> (module it needs, what to install)
EXTRAS = {
    "tensorboard": ("tensorboard", "pip install 'normbench[tensorboard]'"),
    "mlflow": ("mlflow", "pip install 'normbench[mlflow]'"),
    "wandb": ("wandb", "pip install 'normbench[wandb]'"),
}
WANDB_MODES = ("online", "offline", "shared", "disabled", "dryrun", "run")  # W&B's settings.mode values
WANDB_LOCAL_MODES = ("offline", "disabled", "dryrun")  # those that need no account
HASH_TAG = "normbench.config_hash"
log = logging.getLogger(__name__)


def logger_problem(kind: str) -> str | None:
    """Why ``logger=kind`` cannot work here (an unknown name, a missing package), or None."""
    if kind not in LOGGERS:
        return f"logger={kind}: unknown; allowed: {', '.join(LOGGERS)}"
    if kind in EXTRAS and importlib.util.find_spec(EXTRAS[kind][0]) is None:
        module, install = EXTRAS[kind]
        return f"logger={kind}: the {module} package is not installed; run: {install}"
    if kind == "mlflow":
        given = os.environ.get("MLFLOW_TRACKING_URI")
        uri = given or default_mlflow_uri()
        why = _mlflow_store_problem(uri)
        if why:
            store = f"MLFLOW_TRACKING_URI={uri}" if given else f"its store {uri}"
            return f"logger=mlflow: {store}: {why}"
    mode = os.environ.get("WANDB_MODE") or "online"
    if kind == "wandb" and mode not in WANDB_MODES:  # each run's tracker would fail on it
        return f"logger=wandb: WANDB_MODE={mode}: must be one of {', '.join(WANDB_MODES)}"
    if kind == "wandb" and mode not in WANDB_LOCAL_MODES and not _wandb_key_found():
        return (
            f"logger=wandb: no W&B API key for {_wandb_host()} (WANDB_API_KEY, or the ~/.netrc entry `wandb "
            "login` writes); log in, or set WANDB_MODE=offline to keep each run's W&B files in its folder "
            "for `wandb sync`"
        )
    return None


def _wandb_host() -> str:
    return urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "?"


def _wandb_key_found() -> bool:
    """Whether W&B has credentials where it reads them without asking: ``WANDB_API_KEY``, an identity
    token file, or the netrc entry of its host (``$NETRC``, else ``~/.netrc``)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        return netrc.netrc(path).authenticators(_wandb_host()) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def default_mlflow_uri() -> str:
    """MLflow's store without ``$MLFLOW_TRACKING_URI``: mlflow.db in the working directory."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


@cache
def _mlflow_store_problem(uri: str) -> str | None:
    """Why MLflow cannot keep runs at ``uri``, or None; asked once per process, before any run. A sqlite
    database: its folder must exist and take a file (MLflow would retry opening it for about 100 s in
    every run). Any other store: MLflow's client is made for it, which refuses an unknown scheme or its
    retired file store at once (and connects to a database server, with MLflow's own retries); an HTTP
    server's reachability is left to the runs."""
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        if database.name == ":memory:":
            return None
        if not database.parent.is_dir():
            return f"no folder {database.parent} for its database"
        why = write_problem(database.parent)
        return f"cannot write its database in {database.parent} ({why})" if why else None
    import mlflow

    try:
        mlflow.MlflowClient(tracking_uri=uri)  # a scheme MLflow lacks, its retired file store: at once
    except Exception as exc:
        return str(exc).strip().splitlines()[0]
    return None


class Tracker(Protocol):
    def log(self, step: int, values: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def _scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``values`` (booleans and strings are not metrics; the step is the axis)."""
    return {
        k: float(v)
        for k, v in values.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class CsvTracker:
    """``run_dir/metrics.csv``: one ``step,name,value`` row per value, appended."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "metrics.csv"
        new = not self.path.exists()
        self.file = self.path.open("a", newline="")
        self.writer = csv.writer(self.file, lineterminator="\n")
        if new:
            self.writer.writerow(["step", "name", "value"])

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        for name, value in _scalars(values).items():
            self.writer.writerow([step, name, repr(value)])
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardTracker:
    """Event files in ``run_dir/tensorboard`` (torch.utils.tensorboard), the config as text."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=2, default=str)}\n```")

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        for name, value in _scalars(values).items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


class MlflowTracker:
    """One MLflow run per config hash (found again by its tag), the config as its parameters."""

    def __init__(self, config: Mapping[str, Any], config_hash: str, experiment: str) -> None:
        import mlflow
        from mlflow.entities import Param

        uri = os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri()
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{HASH_TAG}` = '{config_hash}'", max_results=1
        )
        if runs:
            self.run_id = runs[0].info.run_id
        else:
            run = self.client.create_run(experiment_id, tags={HASH_TAG: config_hash}, run_name=config_hash)
            self.run_id = run.info.run_id
            params = [Param(k, v[:6000]) for k, v in _flat(config).items()]
            for i in range(0, len(params), 100):  # MLflow's limit per batch
                self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in _scalars(values).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker:
    """A Weights & Biases run whose id is the config hash (resumed, not duplicated, by a rerun), the config
    as its config; its local files in ``run_dir/wandb``."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], config_hash: str, experiment: str) -> None:
        import wandb

        project = os.environ.get("WANDB_PROJECT") or re.sub(r"[/\\#?%:]", "-", experiment)
        self.run = wandb.init(
            project=project,
            group=experiment,  # the sweep, where several share a project ($WANDB_PROJECT)
            id=config_hash,
            name=config_hash,
            resume="allow",
            dir=str(run_dir),
            config=dict(config),
        )

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        self.run.log(_scalars(values), step=step)

    def close(self) -> None:
        self.run.finish()


class Kept:
    """A tracker whose failure costs its run nothing: the first exception it raises is logged as an
    error naming the run's folder, and it logs nothing after (the record in result.json is the run's)."""

    def __init__(self, kind: str, run_dir: Path, open_: Any) -> None:
        self.kind, self.run_dir = kind, run_dir
        self.tracker: Tracker | None = self._guarded(open_)

    def _guarded(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as exc:
            log.error(
                "logger=%s could not log the run in %s (its record is kept): %s: %s",
                self.kind,
                self.run_dir,
                type(exc).__name__,
                exc,
            )
            self.tracker = None
            return None

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        if self.tracker is not None:
            self._guarded(self.tracker.log, step, values)

    def close(self) -> None:
        if self.tracker is not None:
            self._guarded(self.tracker.close)


def open_tracker(
    kind: str, run_dir: Path, config: Mapping[str, Any], config_hash: str = "", experiment: str = "normbench"
) -> Kept | None:
    """The tracker ``kind`` of the run in ``run_dir`` (None for ``none``), :class:`Kept`: a failure of
    it, from opening on, is an error in the log and not the run's. A ``kind`` that cannot work here
    (:func:`logger_problem`) is a ValueError, as it is before any work."""
    problem = logger_problem(kind)
    if problem:
        raise ValueError(problem)
    if kind == "csv":
        return Kept(kind, run_dir, lambda: CsvTracker(run_dir))
    if kind == "tensorboard":
        return Kept(kind, run_dir, lambda: TensorBoardTracker(run_dir, config))
    if kind == "mlflow":
        return Kept(kind, run_dir, lambda: MlflowTracker(config, config_hash or run_dir.name, experiment))
    if kind == "wandb":
        return Kept(
            kind, run_dir, lambda: WandbTracker(run_dir, config, config_hash or run_dir.name, experiment)
        )
    return None


def layer_values(layers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A record's per-layer norm statistics as flat ``layers/NAME/KEY`` values."""
    return {f"layers/{name}/{key}": v for name, values in layers.items() for key, v in values.items()}


def log_record(tracker: Tracker, record: Mapping[str, Any], history: bool = True) -> None:
    """A finished run's record: its history points (unless they were streamed), then its final
    metrics and its norms' statistics at its last step."""
    if history:
        for point in record.get("history") or []:
            tracker.log(int(point["step"]), point)
    last = int(record.get("steps") or 0)
    tracker.log(last, {f"final/{k}": v for k, v in (record.get("metrics") or {}).items()})
    tracker.log(last, layer_values(record.get("layers") or {}))


__all__ = ["EXTRAS", "LOGGERS", "Tracker", "log_record", "logger_problem", "open_tracker"]
