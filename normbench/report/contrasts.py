"""Paired contrasts between report cells, with 95% intervals from scipy.stats and a Holm adjustment.

A contrast is a weighted sum of cells, evaluated seed by seed: ``BN(2) − BN(32)`` is
``{bn@2: +1, bn@32: −1}``; "BN loses more than GN from 32 to 2" is the interaction
``{bn@2: +1, bn@32: −1, gn@2: −1, gn@32: +1}``. Runs pair on their seed (the same seed gives the same
initialization stream and batch order wherever shapes allow, so cell differences are measured on
matched runs, as Bouthillier et al. 2021 recommend). Only seeds present in every cell of the contrast
count. The interval is the Student t interval of the per-seed values (``scipy.stats.ttest_1samp``);
a claim is *established* only when its interval excludes 0 and, where it was made with others, its
Holm-adjusted p-value is below 0.05 (so that the family of claims keeps a 5% error rate).

A cell's selector may name its own ``metric`` (e.g. ``{"norm": "batchnorm", "metric":
"test_error_precise_bn"}``), so one contrast can compare two evaluations of the same runs. With
``diverged_as`` a diverged run counts as that value (e.g. error 1: a model that blew up is unusable,
and dropping it would favour the settings that sometimes blow up); otherwise only completed runs count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from normbench.config import LATER_KEYS

Selector = Mapping[str, object]  # column -> value, e.g. {"norm": "batchnorm", "batch_size": 2}
METRIC = "metric"
ALPHA = 0.05  # a selector key naming the cell's metric instead of a column


@dataclasses.dataclass(frozen=True)
class Contrast:
    name: str
    terms: tuple[tuple[Selector, float], ...]  # (cell, weight)


@dataclasses.dataclass(frozen=True)
class ContrastResult:
    name: str
    n: int  # paired seeds
    mean: float
    low: float  # 95% interval
    high: float
    p: float  # two-sided, H0: mean 0
    p_holm: float = float("nan")  # Holm-adjusted over the contrasts reported together

    @property
    def established(self) -> bool:
        return (
            self.excludes_zero and not self.p_holm >= ALPHA
        )  # NaN p_holm: not adjusted, the interval decides

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def cell_rows(runs: pd.DataFrame, selector: Selector) -> pd.DataFrame:
    keep = pd.Series(True, index=runs.index)
    for column, value in selector.items():
        if column == METRIC:
            continue
        if column not in runs and (value is None or LATER_KEYS.get(column, ...) == value):
            continue  # no run sets this key: all are missing, which for a later key is its old value
        if column not in runs:
            raise KeyError(f"contrast cell {dict(selector)}: no column {column!r} in the runs")
        if isinstance(value, (list, tuple)):
            keep &= runs[column].isin(value)
        else:
            keep &= runs[column].isna() if pd.isna(value) else runs[column] == value
    return runs[keep]


def per_seed(
    runs: pd.DataFrame,
    contrast: Contrast,
    metric: str,
    pair_on: str = "seed",
    diverged_as: float | None = None,
) -> pd.Series:
    """The contrast's value for each seed present (completed, or diverged with ``diverged_as``) in all
    of its cells."""
    statuses = ["completed"] if diverged_as is None else ["completed", "diverged"]
    done = runs[runs["status"].isin(statuses)]
    columns = []
    for selector, weight in contrast.terms:
        column = str(selector.get(METRIC, metric))
        if column not in done:
            raise KeyError(f"contrast {contrast.name!r}: no metric {column!r} in the runs")
        cell = cell_rows(done, selector)
        value = cell[column].astype(float)
        if diverged_as is not None:
            value = value.where(cell["status"] == "completed", diverged_as)
        cell = cell.assign(**{column: value}).dropna(subset=[column])
        if cell[pair_on].duplicated().any():
            raise ValueError(
                f"contrast {contrast.name!r}: cell {dict(selector)} has several runs per {pair_on}; "
                "select on more columns"
            )
        columns.append(cell.set_index(pair_on)[column] * weight)
    return pd.concat(columns, axis=1, join="inner").sum(axis=1)


def evaluate(
    runs: pd.DataFrame,
    contrast: Contrast,
    metric: str,
    confidence: float = 0.95,
    diverged_as: float | None = None,
) -> ContrastResult:
    values = per_seed(runs, contrast, metric, diverged_as=diverged_as).to_numpy(dtype=float)
    n = len(values)
    if n < 2:
        mean = float(values.mean()) if n else float("nan")
        return ContrastResult(contrast.name, n, mean, float("nan"), float("nan"), float("nan"))
    if np.allclose(values, values[0]):  # no spread: t is undefined; the interval is the value itself
        p = 0.0 if values[0] != 0 else 1.0
        return ContrastResult(contrast.name, n, float(values[0]), float(values[0]), float(values[0]), p)
    test = stats.ttest_1samp(values, 0.0)
    interval = test.confidence_interval(confidence)
    return ContrastResult(
        contrast.name, n, float(values.mean()), float(interval.low), float(interval.high), float(test.pvalue)
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (Holm 1979) of the p-values of claims made together: the k-th
    smallest is multiplied by (m − k + 1), then made monotone; NaN stays NaN and does not count."""
    p = np.asarray(pvalues, dtype=float)
    valid = np.flatnonzero(~np.isnan(p))
    adjusted = np.full_like(p, np.nan)
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def evaluate_all(
    runs: pd.DataFrame, contrasts: Sequence[Contrast], metric: str, diverged_as: float | None = None
) -> list[ContrastResult]:
    """Every contrast, with p-values Holm-adjusted over the set."""
    return with_holm([evaluate(runs, c, metric, diverged_as=diverged_as) for c in contrasts])


def with_holm(results: Sequence[ContrastResult]) -> list[ContrastResult]:
    """``results`` with ``p_holm`` adjusted over all of them (the claims a report makes together)."""
    adjusted = holm([r.p for r in results])
    return [dataclasses.replace(r, p_holm=p_adj) for r, p_adj in zip(results, adjusted, strict=True)]


def sentence(result: ContrastResult, unit: float = 100.0, what: str = "pp") -> str:
    """One line stating the contrast, its interval and its verdict, from the numbers alone."""
    if result.n < 2:
        return f"{result.name}: not established ({result.n} paired seed(s); an interval needs 2 or more)."
    if result.established:
        verdict = "established"
    elif result.excludes_zero:
        verdict = f"not established after the Holm adjustment over all claims (adjusted p >= {ALPHA:g})"
    else:
        verdict = "not established (the interval includes 0)"
    return (
        f"{result.name}: {result.mean * unit:+.1f} {what}, 95% CI [{result.low * unit:+.1f}, "
        f"{result.high * unit:+.1f}] over {result.n} paired seeds, Holm-adjusted p = {result.p_holm:.3g}: {verdict}."
    )
