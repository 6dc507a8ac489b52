"""Paired contrasts between report cells, with 95% intervals from scipy.stats and a Holm adjustment.

A contrast is a weighted sum of cells, evaluated seed by seed: ``BN(2) − BN(32)`` is
``{bn@2: +1, bn@32: −1}``; "BN loses more than GN from 32 to 2" is the interaction
``{bn@2: +1, bn@32: −1, gn@2: −1, gn@32: +1}``. Runs pair on their seed (the same seed gives the same
initialization stream and batch order wherever shapes allow, so cell differences are measured on
matched runs, as Bouthillier et al. 2021 recommend). Only seeds present in every cell of the contrast
count. The interval is the Student t interval of the per-seed values (``scipy.stats.ttest_1samp``);
a claim is *established* only when it has at least 3 paired seeds, an interval of non-zero width that
excludes 0 and, where it was made in a family of claims, a Holm-adjusted p-value below 0.05 (so that
the family keeps a 5% error rate). A claim that two cells *agree* is an equivalence claim: two
one-sided t tests (TOST, Schuirmann 1987) against a stated margin, established when both reject, that
is when the 90% interval lies inside ±margin. A difference that is not established is only that;
without a TOST it says nothing about the difference being small.

A cell's selector may name its own ``metric`` (e.g. ``{"norm": "batchnorm", "metric":
"test_error_precise_bn"}``), so one contrast can compare two evaluations of the same runs. With
``diverged_as`` a diverged run counts as that value (e.g. error 1: a model that blew up is unusable,
and dropping it would favour the settings that sometimes blow up); otherwise only completed runs count.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from normbench.experiment.identity import LATER_KEYS

Selector = Mapping[str, object]  # column -> value, e.g. {"norm": "batchnorm", "batch_size": 2}
METRIC = "metric"  # a selector key naming the cell's metric instead of a column
ALPHA = 0.05
MIN_SEEDS = 3  # an interval from fewer paired seeds is reported, never established


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
    p_holm: float = float("nan")  # Holm-adjusted over the family's claims; NaN: not adjusted
    margin: float = float("nan")  # equivalence margin of the TOST; NaN: none tested
    p_tost: float = float("nan")  # TOST p-value: the larger of the two one-sided tests' p
    equivalence: bool = False  # the claim is that the cells agree within ±margin
    family: str = "primary"  # "primary" (Holm within it) or "exploratory" (unadjusted)
    excluded: str = ""  # why the claim was not tested (a cell that does not train, a degenerate one)

    @property
    def test_p(self) -> float:
        """The p-value of what the claim asserts: TOST's for an equivalence, else the t test's."""
        return self.p_tost if self.equivalence else self.p

    @property
    def usable(self) -> bool:
        """Enough seeds and a real interval: fewer than MIN_SEEDS, or zero width, decide nothing."""
        return not self.excluded and self.n >= MIN_SEEDS and self.high > self.low

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    @property
    def equivalent(self) -> bool:
        """Both one-sided tests reject at ALPHA (unadjusted; an equivalence claim's own test)."""
        return self.usable and self.p_tost < ALPHA

    @property
    def established(self) -> bool:
        """The claim holds: usable, its test rejects, and (NaN p_holm: not adjusted) so does Holm's."""
        if not self.usable:
            return False
        rejects = self.equivalent if self.equivalence else self.excludes_zero
        return rejects and not self.p_holm >= ALPHA


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


def _duplicates(cell: pd.DataFrame, pair_on: str) -> str:
    """The first repeated ``pair_on`` value of ``cell``: its runs (paths, where known) and the config
    keys (dotted columns) in which they differ."""
    value = cell.loc[cell[pair_on].duplicated(), pair_on].iloc[0]
    runs = cell[cell[pair_on] == value]
    differ = [
        f"{c}: {', '.join(map(str, runs[c].tolist()))}"
        for c in runs.columns
        if "." in c and runs[c].astype(str).nunique() > 1
    ]
    where = f" ({', '.join(map(str, runs['path']))})" if "path" in runs else ""
    keys = f", which differ in {'; '.join(differ)}" if differ else ", with the same config values"
    return f" ({pair_on} {value}: {len(runs)} runs{where}{keys})"


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
                f"contrast {contrast.name!r}: cell {dict(selector)} has several runs per {pair_on}"
                f"{_duplicates(cell, pair_on)}; select on more columns, or move runs of an earlier "
                "protocol out of the folders"
            )
        columns.append(cell.set_index(pair_on)[column] * weight)
    return pd.concat(columns, axis=1, join="inner").sum(axis=1)


def evaluate(
    runs: pd.DataFrame,
    contrast: Contrast,
    metric: str,
    confidence: float = 0.95,
    diverged_as: float | None = None,
    margin: float | None = None,
    equivalence: bool = False,
) -> ContrastResult:
    """The contrast over the seeds its cells share: mean, t interval, two-sided p and, with a
    ``margin``, the TOST p-value of equivalence within ±margin."""
    values = per_seed(runs, contrast, metric, diverged_as=diverged_as).to_numpy(dtype=float)
    n = len(values)
    extra = {"margin": math.nan if margin is None else float(margin), "equivalence": equivalence}
    if n < 2:
        mean = float(values.mean()) if n else math.nan
        return ContrastResult(contrast.name, n, mean, math.nan, math.nan, math.nan, **extra)
    if np.allclose(values, values[0]):  # no spread: t is undefined; the interval is the value itself
        p = 0.0 if values[0] != 0 else 1.0
        v = float(values[0])
        return ContrastResult(contrast.name, n, v, v, v, p, **extra)
    test = stats.ttest_1samp(values, 0.0)
    interval = test.confidence_interval(confidence)
    p_tost = math.nan
    if margin is not None:
        above = stats.ttest_1samp(values, -margin, alternative="greater").pvalue
        below = stats.ttest_1samp(values, margin, alternative="less").pvalue
        p_tost = float(max(above, below))
    return ContrastResult(
        contrast.name,
        n,
        float(values.mean()),
        float(interval.low),
        float(interval.high),
        float(test.pvalue),
        p_tost=p_tost,
        **extra,
    )


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student t interval (scipy.stats) of independent values; the interval is NaN below 2."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if len(values) else math.nan
    if len(values) < 2:
        return mean, math.nan, math.nan
    if np.allclose(values, values[0]):
        return mean, mean, mean
    low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=stats.sem(values))
    return mean, float(low), float(high)


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
    """``results`` with ``p_holm`` adjusted over all of them (the claims a report makes together), each
    by the p-value of what it asserts (:attr:`ContrastResult.test_p`)."""
    adjusted = holm([r.test_p for r in results])
    return [dataclasses.replace(r, p_holm=p_adj) for r, p_adj in zip(results, adjusted, strict=True)]


def _pp(value: float, unit: float) -> str:
    return f"{value * unit:+.1f}"


def sentence(result: ContrastResult, unit: float = 100.0, what: str = "pp") -> str:
    """One line stating the contrast, its interval and its verdict, from the numbers alone. A difference
    that is not established is called that, never "absent"; only a TOST can say a difference is small."""
    name = result.name
    if result.excluded:
        return f"{name}: not tested ({result.excluded})."
    if result.n < 2:
        return f"{name}: not established ({result.n} paired seed(s); an interval needs 2 or more)."
    estimate = (
        f"{_pp(result.mean, unit)} {what}, 95% CI [{_pp(result.low, unit)}, {_pp(result.high, unit)}] "
        f"over {result.n} paired seeds"
    )
    adjusted = result.family == "primary" and not math.isnan(result.p_holm)
    if result.equivalence:
        estimate += f", TOST p = {result.p_tost:.3g} against ±{result.margin * unit:g} {what}"
    elif adjusted:
        estimate += f", Holm-adjusted p = {result.p_holm:.3g}"
    if not result.usable:
        reason = (
            f"fewer than {MIN_SEEDS} paired seeds" if result.n < MIN_SEEDS else "an interval of zero width"
        )
        return f"{name}: {estimate}: not established ({reason})."
    if result.equivalence:
        verdict = (
            f"equivalent within ±{result.margin * unit:g} {what} "
            + ("(established)" if adjusted else "(exploratory, unadjusted)")
            if result.established
            else f"equivalence within ±{result.margin * unit:g} {what} not established"
        )
        if result.equivalent and not result.established:
            verdict += f" after the Holm adjustment (adjusted p = {result.p_holm:.3g})"
    elif result.established:
        verdict = "established" if adjusted else "interval excludes 0 (exploratory, unadjusted)"
    elif result.excludes_zero:
        verdict = f"not established after the Holm adjustment over its family (adjusted p >= {ALPHA:g})"
    else:
        verdict = "not established (the interval includes 0)"
        if not math.isnan(result.p_tost):
            verdict += f"; within ±{result.margin * unit:g} {what}: " + (
                f"yes by TOST (p = {result.p_tost:.3g}, unadjusted)"
                if result.equivalent
                else f"not shown either (TOST p = {result.p_tost:.3g})"
            )
    return f"{name}: {estimate}: {verdict}."
