"""Summary tables over seeds: per cell statistics, the change against a reference batch size, and the
norm × batch-size tables in the style of Wu & He 2018, Table 2."""

from __future__ import annotations

import pandas as pd

from normbench.report.contrasts import mean_interval
from normbench.report.load import config_columns

DISPLAY = ("task", "norm", "batch_size")


def cell_columns(df: pd.DataFrame) -> list[str]:
    """The columns that identify a cell: task, norm and batch size, then every other config column
    whose value varies across ``df`` — except the seed. Runs that differ in any config value never
    share a cell."""
    varying = [
        c
        for c in config_columns(df)
        if c not in (*DISPLAY, "seed") and df[c].astype(str).nunique(dropna=False) > 1
    ]
    return [*DISPLAY, *sorted(varying)]


def facet_columns(df: pd.DataFrame) -> list[str]:
    """Cell columns that vary for one task and norm (a swept lr, budget or sampler): each combination
    gets its own table and figure. Columns that only follow the task or the norm (the model's width,
    a norm's own options) are not facets."""
    cells = cell_columns(df)
    return [
        c
        for c in cells
        if c not in DISPLAY and (df.groupby(["task", "norm"])[c].nunique(dropna=False) > 1).any()
    ]


def summarize(df: pd.DataFrame, metric: str = "test_error") -> pd.DataFrame:
    """Per cell: runs, completed n, mean/std/median/min/max of ``metric`` over seeds, diverged and
    failed counts, and ``incomplete`` where a cell has fewer completed seeds than most cells of its
    task have (the largest such count where counts tie)."""
    cols = cell_columns(df)
    # dropna=False: runs without a swept value (e.g. norm.ghost_batch_size for batchnorm) form their own cells
    done = df[df["status"] == "completed"]
    stats = done.groupby(cols, sort=True, dropna=False)[metric].agg(
        ["count", "mean", "std", "median", "min", "max"]
    )
    stats = stats.rename(columns={"count": "n"})
    status = df.groupby(cols, sort=True, dropna=False)["status"].value_counts().unstack(fill_value=0)
    for s in ("completed", "diverged", "failed"):
        if s not in status:
            status[s] = 0
    out = status[["diverged", "failed"]].rename(columns=lambda s: f"n_{s}")
    out.insert(0, "runs", status.sum(axis=1))
    out = out.join(stats, how="left")
    out["n"] = out["n"].fillna(0).astype(int)
    out = out.reset_index()
    # the usual count of the task's cells, not the largest: a study that gives some cells extra seeds
    # (its primary claims') leaves the others complete
    out["incomplete"] = out["n"] < out.groupby("task")["n"].transform(lambda n: n.mode().max())
    return out[
        [*cols, "runs", "n", "mean", "std", "median", "min", "max", "n_diverged", "n_failed", "incomplete"]
    ]


def with_reference_delta(summary: pd.DataFrame, reference_batch: int = 32) -> pd.DataFrame:
    """Add ``delta_vs_ref``: mean minus the mean of the same cell at ``reference_batch`` (NaN where the
    reference cell is missing), as in the last row of Wu & He 2018, Table 2."""
    others = [c for c in summary.columns[: summary.columns.get_loc("runs")] if c != "batch_size"]
    ref = summary[summary["batch_size"] == reference_batch][[*others, "mean"]].rename(
        columns={"mean": "ref_mean"}
    )
    merged = summary.merge(ref, on=others, how="left")
    merged["delta_vs_ref"] = merged["mean"] - merged["ref_mean"]
    return merged.drop(columns="ref_mean")


def matches(series: pd.Series, value: object) -> pd.Series:
    """``series == value``, where a missing value matches missing values."""
    return series.isna() if pd.isna(value) else series == value


LATE_FRACTION = 0.2  # "the last fifth of training"
STILL_FALLING = 0.02  # a mean drop over it larger than this share of the value: not yet on a plateau
# ... and, for an error, larger than this absolute drop (half a percentage point)
STILL_FALLING_ERROR = 0.005


def late_drop(history: list[dict]) -> tuple[float, float] | None:
    """A run's validation error (its training loss where it has none) at the last evaluation at or
    before the final LATE_FRACTION of its steps, and at its end; None with too short a history.

    The end, not the lowest value after the mark: the minimum of several noisy evaluations is biased
    low, so it would find progress in noise."""
    if not isinstance(history, list) or len(history) < 3:
        return None
    key = "val_error" if all("val_error" in p for p in history) else "train_loss"
    if not all(key in p for p in history):  # a history of other measures (a GAN's): no verdict
        return None
    last = history[-1]["step"]
    mark = [p for p in history if p["step"] <= (1 - LATE_FRACTION) * last]
    if not mark or mark[-1][key] is None or history[-1][key] is None:
        return None
    return float(mark[-1][key]), float(history[-1][key])


def convergence(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell: mean final training error, the mean drop of its runs' validation error (or training
    loss) over the last LATE_FRACTION of training with its 95% t interval over the runs, and
    ``flagged`` where the cell was still improving: the mean drop exceeds STILL_FALLING of the value
    (and, for an error, STILL_FALLING_ERROR) and its interval lies above 0, so that one noisy
    evaluation of one run cannot flag a cell."""
    done = runs[runs["status"] == "completed"].copy()
    cols = cell_columns(runs)
    pairs = done["history"].map(late_drop) if "history" in done else pd.Series(None, index=done.index)
    done["before"] = pairs.map(lambda p: p[0] if p else float("nan"))
    done["drop"] = pairs.map(lambda p: p[0] - p[1] if p else float("nan"))
    done["measure"] = done["history"].map(lambda h: "val_error" if _validated(h) else "train_loss")
    rows = []
    for key, cell in done.groupby(cols, sort=True, dropna=False):
        drops = cell["drop"].dropna()
        mean, low, high = mean_interval(drops.to_list())
        measure = cell["measure"].iloc[0]
        floor = STILL_FALLING_ERROR if measure == "val_error" else 0.0
        threshold = max(STILL_FALLING * cell["before"].mean(), floor)
        rows.append(
            {
                **dict(zip(cols, key, strict=True)),
                "train_error": cell["train_error"].mean(),
                "n": len(drops),
                "measure": measure,
                "drop": mean,
                "drop_low": low,
                "drop_high": high,
                "flagged": bool(len(drops) >= 2 and low > 0 and mean > threshold),
            }
        )
    return pd.DataFrame(
        rows, columns=[*cols, "train_error", "n", "measure", "drop", "drop_low", "drop_high", "flagged"]
    )


def _validated(history: object) -> bool:
    return isinstance(history, list) and bool(history) and all("val_error" in p for p in history)
