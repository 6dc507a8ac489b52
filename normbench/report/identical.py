"""Arms that trained identically: two norms (or one norm at two settings) whose runs, paired on every
other setting, end with the same losses and errors up to float rounding.

Such arms computed the same thing at those settings - an option that never took effect, as BatchRenorm's
warm-up (plain BatchNorm) outlasting a short run - so their contrasts there are zero-width and say
nothing about the formulas. The report names them instead of leaving a reader to wonder at a column
that repeats another.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from normbench.report.load import config_columns
from normbench.report.markdown import facet_title

RTOL = 1e-4  # float rounding amplified over a short run stays near 1e-6; distinct arms differ by >1e-2


def _arms(done: pd.DataFrame) -> pd.Series:
    """Each run's arm: its norm, with the norm's own options that vary among that norm's runs of the
    same task."""
    options = [c for c in done.columns if c.startswith("norm.")]
    varying = {
        cell: [c for c in options if part[c].astype(str).nunique(dropna=False) > 1]
        for cell, part in done.groupby(["task", "norm"])
    }
    labels = []
    for row in done.itertuples(index=False):
        values = dict(zip(done.columns, row, strict=True))
        keys = varying[values["task"], values["norm"]]
        title = facet_title(keys, [values[k] for k in keys])
        labels.append(f"{values['norm']} ({title})" if title else values["norm"])
    return pd.Series(labels, index=done.index)


def _results(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if ("_loss" in c or "_error" in c) and pd.api.types.is_numeric_dtype(df[c])]


def identical_arms(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task, pair of arms and batch size where every pair of their completed runs that share every
    other config value (seed, learning rate, data, ...) has every loss and error within ``RTOL``
    relative, and the runs differ from each other by more than that: task, arm_a, arm_b, batch_size,
    pairs."""
    columns = ["task", "arm_a", "arm_b", "batch_size", "pairs"]
    done = runs[runs["status"] == "completed"]
    if done.empty:
        return pd.DataFrame(columns=columns)
    keys = [c for c in config_columns(done) if c != "norm" and not c.startswith("norm.")]
    results = _results(done)
    frame = done[["task", "batch_size", *results]].assign(
        arm=_arms(done), key=done[keys].astype(str).agg("|".join, axis=1)
    )
    pairs = frame.merge(frame, on="key", suffixes=("_a", "_b"))
    pairs = pairs[pairs["arm_a"] < pairs["arm_b"]]
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    a = pairs[[f"{c}_a" for c in results]].to_numpy(float)
    b = pairs[[f"{c}_b" for c in results]].to_numpy(float)
    both = ~(np.isnan(a) | np.isnan(b))
    close = np.abs(a - b) <= RTOL * np.maximum(np.abs(a), np.abs(b))
    pairs = pairs.assign(same=(close | ~both).all(axis=1) & both.any(axis=1))
    cell = ["task_a", "arm_a", "arm_b", "batch_size_a"]
    cells = pairs.groupby(cell).agg(pairs=("same", "size"), same=("same", "all"))
    # Runs that end alike whatever their seed (collapsed to one output, as nets that did not train
    # do) would match any other such arm: a cell counts only where its runs differ from each other
    # by more than the tolerance, so the matching is pair by pair.
    values = pairs.groupby(cell)[[f"{c}_a" for c in results]]
    spread = (values.max() - values.min()).to_numpy(float)
    scale = values.agg(lambda v: v.abs().max()).to_numpy(float)
    cells = cells.assign(varied=(spread > RTOL * scale).any(axis=1))
    found = cells[cells["same"] & cells["varied"]].reset_index()
    found = found.rename(columns={"task_a": "task", "batch_size_a": "batch_size"})
    return found[columns].reset_index(drop=True)


def identical_section(runs: pd.DataFrame) -> str:
    """The report's paragraph naming arms that trained identically ("" where none did)."""
    found = identical_arms(runs)
    if found.empty:
        return ""
    lines = [
        "## Arms that trained identically",
        "",
        "Runs of two arms that share every other setting (seed, learning rate, data) and end with the same "
        f"results up to float rounding (every loss and error within {RTOL:g} relative), in every pair of a "
        "cell: there the two arms computed the same thing, and their contrasts are zero-width and say "
        "nothing about the norms' formulas.",
        "",
    ]
    for (task, arm_a, arm_b), part in found.groupby(["task", "arm_a", "arm_b"], sort=True):
        sizes = ", ".join(str(int(b)) for b in sorted(part["batch_size"]))
        lines.append(
            f"- {task}: {arm_b} and {arm_a} at batch {sizes} ({int(part['pairs'].sum())} pairs of runs)."
        )
    return "\n".join([*lines, ""])
