"""Hyper-parameter selection on the validation split: per cell, the swept value(s) of some keys with the
lowest mean validation error over seeds. The test set chooses nothing; the report then shows the test
error of each cell's choice.

A cell here is a report cell (task, norm, batch size and every other varying config value, except the
seed) without the selected keys. A diverged run counts as validation error 1 (its model is unusable,
and averaging only the surviving seeds would favour learning rates that sometimes blow up); failed
runs (exceptions) are left out. Ties go to the first candidate in sorted order (the smaller value).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from normbench.report.load import config_columns
from normbench.report.tables import cell_columns

CRITERION = "val_error"
SELECTED = "selected"  # what a selected key's column holds in the runs the report tabulates
AXES = ("task", "norm", "batch_size")  # the report's rows, columns and panels: never chosen per cell


def as_keys(runs: pd.DataFrame, keys: str | Sequence[str]) -> list[str]:
    """``keys`` as a list (one key may be given as a string, as in ``DataFrame.groupby``); TypeError
    when ``runs`` is not a frame or a key not a string."""
    if not isinstance(runs, pd.DataFrame):
        raise TypeError(f"runs must be a DataFrame (normbench.report.load_runs), got {type(runs).__name__}")
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys or not all(isinstance(key, str) for key in keys):
        raise TypeError(f"keys must be one or more config keys as strings (e.g. 'optim.lr'), got {keys!r}")
    return keys


def check_keys(runs: pd.DataFrame, keys: Sequence[str]) -> None:
    """ValueError naming a key that is not a config column, or not swept, or records without the
    validation metric."""
    columns = set(config_columns(runs))
    swept = sorted(c for c in columns if c != "seed" and runs[c].astype(str).nunique(dropna=False) > 1)
    if "seed" in keys:  # the seed is the repeat every contrast pairs, not a setting
        raise ValueError(
            "selection key seed: the seeds are the repeats of each cell; choosing one on validation leaves one "
            "lucky run per cell and no interval"
        )
    if axes := [key for key in keys if key in AXES]:
        raise ValueError(
            f"selection key {axes[0]}: {', '.join(AXES)} are what the report compares (each norm's error "
            "against the batch size, per task); select settings within a cell, such as optim.lr"
        )
    if repeated := sorted({key for key in keys if keys.count(key) > 1}):
        raise ValueError(f"selection key {repeated[0]}: given more than once")
    for key in keys:
        if key not in columns:
            raise ValueError(
                f"selection key {key}: not a config key of these runs (swept here: {', '.join(swept) or 'none'})"
            )
    if CRITERION not in runs or runs[CRITERION].isna().all():
        raise ValueError(
            f"selection keys {' '.join(keys)}: these runs have no {CRITERION} (they were trained without a "
            "validation split, data.val_size=0); the test set chooses nothing, so there is nothing to select on"
        )


def candidates(runs: pd.DataFrame, keys: str | Sequence[str]) -> pd.DataFrame:
    """One row per (cell, value of ``keys``): ``val_mean`` (diverged runs counted as 1), ``n`` runs,
    ``n_diverged``, and ``chosen`` marking each cell's lowest ``val_mean``."""
    keys = as_keys(runs, keys)
    check_keys(runs, keys)
    cells = [c for c in cell_columns(runs) if c not in keys]
    usable = runs[runs["status"].isin(["completed", "diverged"])].copy()
    usable["criterion"] = usable[CRITERION].where(usable["status"] == "completed", 1.0)
    grouped = usable.groupby([*cells, *keys], sort=True, dropna=False)
    table = grouped["criterion"].agg(val_mean="mean", n="count").reset_index()
    table["n_diverged"] = grouped["status"].agg(lambda s: int((s == "diverged").sum())).to_numpy()
    table["chosen"] = False
    for _, cell in table.groupby(cells, sort=False, dropna=False):
        if cell["val_mean"].notna().any():
            table.loc[cell["val_mean"].idxmin(), "chosen"] = True
        elif len(cell) == 1:  # a task without the criterion (a GAN's) and nothing to choose between
            table.loc[cell.index[0], "chosen"] = True
        else:
            first = cell.iloc[0]
            raise ValueError(
                f"selection keys {' '.join(keys)}: the cell {first['task']}, {first['norm']}, batch {first['batch_size']} "
                f"has {len(cell)} candidates but no {CRITERION} to choose between them"
            )
    return table


def select_on_validation(runs: pd.DataFrame, keys: str | Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs of each cell's chosen value of ``keys`` — with those columns set to ``"selected"``, so
    that cells no longer split on them — and the candidates table (:func:`candidates`)."""
    keys = as_keys(runs, keys)
    table = candidates(runs, keys)
    cells = [c for c in cell_columns(runs) if c not in keys]
    cols = [*cells, *keys]
    chosen = set(_joined(table.loc[table["chosen"], cols]))
    picked = runs[_joined(runs[cols]).isin(chosen)].copy()
    for key in keys:
        picked[key] = SELECTED
    return picked, table


def leave_one_seed_out(runs: pd.DataFrame, keys: str | Sequence[str]) -> pd.DataFrame:
    """How stable each cell's choice is: per cell, ``stable`` is True when choosing on every subset of
    its seeds with one seed left out gives the same value(s) of ``keys`` as choosing on all of them;
    ``changed`` counts the left-out seeds that change it."""
    keys = as_keys(runs, keys)
    full = candidates(runs, keys)
    cells = [c for c in cell_columns(runs) if c not in keys]
    chosen = full[full["chosen"]].set_index(cells)[list(keys)]
    changed = pd.Series(0, index=chosen.index)
    for seed in sorted(runs["seed"].unique()):
        rest = runs[runs["seed"] != seed]
        if rest.empty:
            continue
        table = candidates(rest, keys)
        again = table[table["chosen"]].set_index(cells)[list(keys)].reindex(chosen.index)
        differs = (again.astype(str) != chosen.astype(str)).any(axis=1)
        changed += differs.astype(int)
    return pd.DataFrame({"changed": changed, "stable": changed == 0}).reset_index()


def _joined(df: pd.DataFrame) -> pd.Series:
    """Each row's values as one string (missing values as 'nan' on both sides of a comparison)."""
    as_text = df.apply(lambda column: column.map(str))  # str() of every value, NA and nullable types too
    return as_text.agg("\x1f".join, axis=1)
