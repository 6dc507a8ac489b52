"""Bracketed hyper-parameter grids: after a study's sweeps, every cell whose best validation error sits at
an edge of the values it tried gets the next value beyond that edge (one grid step, ``factor`` apart),
until its choice is interior or the next value would pass a bound the study description states.

The rule lives in the description (``bracket: {key: optim.lr, factor: 2, bounds: [lo, hi]}``), so a
fresh clone that reruns the study extends the same cells to the same values. Only the cells the
description names degenerate (a norm that cannot carry information at that batch size) are left as
they are. A cell that did not train at any value tried (mean validation error at or above the study's
``does_not_train_at``) is extended like any other - a marginal cell often trains further out - and
flagged (``trains`` False) so the report can say so. The choice itself is
:func:`normbench.report.select.candidates` (validation split, a diverged run counts as error 1).

:mod:`normbench.report.rounds` turns the rule into the sweeps of the next round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from normbench.experiment.identity import LATER_KEYS
from normbench.report.curve import degenerate_reason
from normbench.report.select import candidates
from normbench.report.tables import cell_columns

BRACKET_KEYS = {"key", "factor", "bounds"}


@dataclass(frozen=True)
class Bracket:
    key: str
    factor: float
    low: float
    high: float

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], where: str) -> Bracket:
        """Checked: a key, a factor > 1, bounds [low, high] with 0 < low < high; ValueError names the entry."""
        unknown = sorted(set(spec) - BRACKET_KEYS)
        if unknown:
            raise ValueError(
                f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(BRACKET_KEYS))}"
            )
        factor, bounds = spec.get("factor"), spec.get("bounds")
        if not spec.get("key") or not isinstance(factor, (int, float)) or not factor > 1:
            raise ValueError(
                f"{where}: needs key and a factor > 1, got key={spec.get('key')!r}, factor={factor!r}"
            )
        if not (isinstance(bounds, list) and len(bounds) == 2 and 0 < bounds[0] < bounds[1] < math.inf):
            raise ValueError(f"{where}: bounds={bounds!r}: must be [low, high] with 0 < low < high")
        return cls(str(spec["key"]), float(factor), float(bounds[0]), float(bounds[1]))

    def beyond(self, value: float, direction: int) -> float | None:
        """The grid value one step past ``value`` (6 significant digits), or None past a bound."""
        step = float(f"{value * self.factor**direction:.6g}")
        return step if self.low * (1 - 1e-9) <= step <= self.high * (1 + 1e-9) else None


def bracket_status(
    runs: pd.DataFrame,
    bracket: Bracket,
    does_not_train_at: float | None = None,
    degenerate: list[Mapping[str, Any]] | tuple = (),
) -> pd.DataFrame:
    """One row per cell: the values tried, ``chosen``, ``edge`` (-1 low, +1 high, 0 interior),
    ``next`` (the value to try, NaN if none), ``state`` (interior, extend, at a bound or degenerate) and
    ``trains`` (False when its best mean validation error is at or above ``does_not_train_at``)."""
    table = candidates(runs, [bracket.key])
    cells = [c for c in cell_columns(runs) if c != bracket.key]
    rows = []
    for keys, part in table.groupby(cells, sort=True, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        cell = dict(zip(cells, keys, strict=True))
        tried = sorted(part[bracket.key].astype(float))
        chosen = float(part.loc[part["chosen"], bracket.key].iloc[0])
        best = float(part["val_mean"].min())
        edge = -1 if chosen == tried[0] else 1 if chosen == tried[-1] else 0
        if len(tried) == 1:
            edge = 0  # one value: nothing to bracket (a grid the study does not select on)
        step = bracket.beyond(chosen, edge) if edge else None
        reason = degenerate_reason(degenerate, cell_runs(runs, cell))
        if reason:
            state = "degenerate"
        elif edge == 0:
            state = "interior"
        else:
            state = "at a bound" if step is None else "extend"
        rows.append(
            {
                **cell,
                "tried": tried,
                "chosen": chosen,
                "val_mean": best,
                "edge": edge,
                "next": step if state == "extend" else math.nan,
                "state": state,
                # a cell without a validation error (a GAN's) is not judged
                "trains": not (does_not_train_at is not None and best >= does_not_train_at),
                "seeds": sorted(cell_runs(runs, cell)["seed"].unique().tolist()),
            }
        )
    return pd.DataFrame(rows)


def cell_runs(runs: pd.DataFrame, cell: Mapping[str, Any]) -> pd.DataFrame:
    keep = pd.Series(True, index=runs.index)
    for column, value in cell.items():
        keep &= runs[column].isna() if pd.isna(value) else runs[column] == value
    return runs[keep]


def _value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def next_round(status: pd.DataFrame, bracket: Bracket, fixed: list[str]) -> list[list[str]]:
    """The command-line overrides that rerun each cell to extend: its ``fixed`` columns, the next value
    of the bracketed key and the cell's seeds (a sweep over them). Given after the preset, they take
    precedence over its ``hydra.sweeper.params``."""
    commands = []
    for row in status[status["state"] == "extend"].to_dict("records"):
        overrides = [
            f"{c}={_value(row[c])}"
            for c in fixed
            # a later key at its old value is the default (and a key other plugins may not have)
            if c in row and not pd.isna(row[c]) and LATER_KEYS.get(c, ...) != row[c]
        ]
        overrides.append(f"{bracket.key}={_value(row['next'])}")
        overrides.append("seed=" + ",".join(map(str, row["seeds"])))
        commands.append(overrides)
    return commands
