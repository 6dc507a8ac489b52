"""Reading run records into one pandas DataFrame, one row per run.

A run's identity is its resolved config (the record's ``config``): it is flattened into dotted columns
(``optim.lr``, ``train.budget``, ``norm.num_groups``; top-level values such as ``batch_size`` keep
their name), and ``task.name`` and ``norm.name`` become the display columns ``task`` and ``norm``. Nothing
is read from the command line that produced a run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from normbench.evidence import read_records_file
from normbench.experiment.identity import LATER_KEYS
from normbench.results import InvalidRecord, find_records, load_run

log = logging.getLogger(__name__)

DISPLAY_COLUMNS = ["task", "norm", "batch_size", "seed"]
BASE_COLUMNS = [
    *DISPLAY_COLUMNS,
    "status",
    "test_error",
    "test_loss",
    "train_error",
    "train_loss",
    "steps",
    "lr",
    "wall_time_s",
    "config_hash",
]
RECORD_FIELDS = ("steps", "lr", "wall_time_s", "time_per_step_s", "config_hash", "finished_at", "error")
STATUS_RANK = {"completed": 0, "diverged": 1, "failed": 2}
# undotted config columns: the display names of task.name and norm.name, and the top-level values
CONFIG_TOP_LEVEL = ("task", "norm", "batch_size", "seed", "world_size")


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; lists become JSON strings."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else value
    return flat


def config_columns(df: pd.DataFrame) -> list[str]:
    """The columns that hold config values: dotted paths and the config's top-level values."""
    return [c for c in df.columns if "." in c or c in CONFIG_TOP_LEVEL]


def _row(record: dict[str, Any], path: Path, with_history: bool) -> dict[str, Any]:
    config = flatten_config(record["config"])
    row: dict[str, Any] = {
        "task": config.pop("task.name"),
        "norm": config.pop("norm.name"),
        "status": record["status"],
        **{k: v for k, v in record["metrics"].items() if not isinstance(v, (list, dict))},
        **{key: record.get(key) for key in RECORD_FIELDS},
        **config,
        "path": str(path.parent),
    }
    if record.get("main_metric", {}).get("error_is_fraction") is False:  # a column only where it says so
        row["error_is_fraction"] = False
    if with_history:
        row["history"] = record.get("history", [])
        row["layers"] = record.get("layers", {})
    return row


def read_records(
    dirs: Iterable[str | os.PathLike[str]], progress: bool | None = None
) -> tuple[list[tuple[Path, dict[str, Any]]], list[str]]:
    """Every valid record under ``dirs`` (run folders, searched recursively, or a study's
    ``records.jsonl``) with its path, and one message per file or line skipped (naming it and why: not a
    regular file, too large, not JSON, wrong types or ranges)."""
    records, skipped = [], []
    dirs = list(dirs)
    for d in dirs:  # a study's committed records file (normbench.evidence) stands for its run folders
        if Path(d).suffix == ".jsonl":
            if not Path(d).exists():
                raise FileNotFoundError(f"records file {d} does not exist")
            try:
                found, problems = read_records_file(d)
            except InvalidRecord as exc:
                found, problems = [], [f"skipped records file {exc}"]
            records += found
            skipped += problems
    paths = find_records(d for d in dirs if Path(d).suffix != ".jsonl")
    for path in tqdm(
        paths, desc="reading runs", unit="run", disable=None if progress is None else not progress
    ):
        try:
            records.append((path, load_run(path)))
        except InvalidRecord as exc:
            skipped.append(f"skipped run record {exc}")
    return records, skipped


def runs_frame(records: list[tuple[Path, dict[str, Any]]], with_history: bool = False) -> pd.DataFrame:
    """One row per config hash (completed before diverged before failed, then the newest), sorted."""
    if not records:
        return pd.DataFrame(columns=BASE_COLUMNS)
    df = pd.DataFrame([_row(record, path, with_history) for path, record in records])
    for column in BASE_COLUMNS:
        if column not in df:
            df[column] = None
    df["_rank"] = df["status"].map(STATUS_RANK)
    df = df.sort_values(["config_hash", "_rank", "finished_at", "path"], ascending=[True, True, False, True])
    df = df.drop_duplicates("config_hash", keep="first").drop(columns="_rank")
    extra = sorted(c for c in df.columns if c not in BASE_COLUMNS)
    df = df[BASE_COLUMNS + extra]
    df = df.sort_values(["task", "norm", "batch_size", "seed", "config_hash"], kind="mergesort")
    return with_later_defaults(df.reset_index(drop=True))


def with_later_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """A record leaves out a key added after records existed while the key is at its old value
    (``normbench.experiment.identity.LATER_KEYS``: its hash must not change). Where some runs set such a key, the others'
    missing value is that old value, filled in so that cells compare like with like."""
    for key, value in LATER_KEYS.items():
        if key in df:
            df[key] = df[key].astype(object).where(df[key].notna(), value).infer_objects()
    return df


def load_runs(
    *dirs: str | os.PathLike[str], with_history: bool = False, progress: bool | None = None
) -> pd.DataFrame:
    """One row per run found under ``dirs`` (searched recursively for ``result.json``), each a folder or
    a study's ``records.jsonl``, given as arguments or as lists of them.

    Columns: task, norm, batch_size, seed, status, the metrics, steps, lr, wall_time_s, config_hash,
    then every config value as a dotted column (``optim.lr``, ``train.budget``, ...), finished_at,
    error and path. Invalid files are skipped with one warning each, naming the file and the reason.
    When several folders hold the same config hash, one row is kept: completed before diverged before
    failed, then the newest. Rows are sorted, so the same inputs give the same frame.
    """
    records, skipped = read_records(record_paths(dirs), progress)
    for message in skipped:
        log.warning(message)
    return runs_frame(records, with_history)


def record_paths(given: Iterable[object], caller: str = "load_runs") -> list[str | os.PathLike[str]]:
    """The folders and records files ``given`` to ``caller``: each a str or path, or a list (any
    iterable) of them, as ``glob`` gives; TypeError naming what is neither, or nothing given."""
    paths = [
        p
        for arg in given
        for p in ([arg] if isinstance(arg, (str, os.PathLike)) or not isinstance(arg, Iterable) else arg)
    ]
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{caller} takes folders or records files (str or path), got {path!r}")
    if not paths:
        raise TypeError(f"{caller} needs at least one folder or records file")
    return paths
