"""Reading run records into one pandas DataFrame, one row per run."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from normbench.results import RESULT_FILE, InvalidRecord, load_run

log = logging.getLogger(__name__)

BASE_COLUMNS = [
    "task",
    "norm",
    "batch_size",
    "seed",
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
# Config values that change what a run computes even when not typed on the command line; always
# carried, so grids run with different budgets or samplers never mix in one cell.
CONFIG_COLUMNS = {
    "budget": ("train", "budget"),
    "sampler": ("data", "sampler"),
    "classes_per_batch": ("data", "classes_per_batch"),
}
STATUS_RANK = {"completed": 0, "diverged": 1, "failed": 2}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return load_run(path)
    except InvalidRecord as exc:
        message = f"skipping unreadable or partial run record: {exc}"
        warnings.warn(message, stacklevel=3)
        log.warning(message)
        return None


def _row(record: dict[str, Any], path: Path, with_history: bool) -> dict[str, Any]:
    row: dict[str, Any] = {}
    config = record.get("config", {})
    for column, keys in CONFIG_COLUMNS.items():
        value: Any = config
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        row[column] = value
    if row["sampler"] != "class_grouped":
        row["classes_per_batch"] = None  # only meaningful for class-grouped batches
    mirrored = {".".join(keys) for keys in CONFIG_COLUMNS.values()}
    for key, value in record["choices"].items():
        if key in mirrored:
            continue
        row[key] = value if not isinstance(value, (list, dict)) else json.dumps(value)
    row["status"] = record["status"]
    row.update({k: v for k, v in record["metrics"].items() if not isinstance(v, (list, dict))})
    for key in ("steps", "lr", "wall_time_s", "time_per_step_s", "config_hash", "finished_at", "error"):
        row[key] = record.get(key)
    row["path"] = str(path.parent)
    if with_history:
        row["history"] = record.get("history", [])
    return row


def find_records(dirs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    paths: set[Path] = set()
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise FileNotFoundError(f"sweep folder {root} does not exist")
        paths.update(root.rglob(RESULT_FILE) if root.is_dir() else [root])
    return sorted(paths)


def load_runs(
    *dirs: str | os.PathLike[str], with_history: bool = False, progress: bool | None = None
) -> pd.DataFrame:
    """One row per run found under ``dirs`` (searched recursively for ``result.json``).

    Columns: task, norm, batch_size, seed, status, the metrics, steps, lr, wall_time_s, config_hash,
    then every other swept value (a command-line override) and metric, plus budget, sampler,
    finished_at and path. Unreadable or partial files are skipped with a warning naming each. When
    several folders hold the same config hash, one row is kept: completed before diverged before
    failed, then the newest. Rows are sorted, so the same inputs give the same frame.
    """
    paths = find_records(dirs)
    rows = []
    for path in tqdm(
        paths, desc="reading runs", unit="run", disable=None if progress is None else not progress
    ):
        record = _read(path)
        if record is not None:
            rows.append(_row(record, path, with_history))
    if not rows:
        return pd.DataFrame(columns=[*BASE_COLUMNS, *CONFIG_COLUMNS])
    df = pd.DataFrame(rows)
    for column in BASE_COLUMNS:
        if column not in df:
            df[column] = None
    df["_rank"] = df["status"].map(STATUS_RANK)
    df = df.sort_values(["config_hash", "_rank", "finished_at", "path"], ascending=[True, True, False, True])
    df = df.drop_duplicates("config_hash", keep="first").drop(columns="_rank")
    extra = sorted(c for c in df.columns if c not in BASE_COLUMNS)
    df = df[BASE_COLUMNS + extra]
    df = df.sort_values(["task", "norm", "batch_size", "seed", "config_hash"], kind="mergesort")
    return df.reset_index(drop=True)
