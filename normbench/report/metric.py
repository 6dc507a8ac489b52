"""The main metric a report tabulates: the tasks' own (``task.metric`` and ``task.lower_is_better`` in
their config), test error unless a task says otherwise. Error rates are fractions shown in percent,
unless the task's records say its errors are not fractions (``main_metric.error_is_fraction``: e.g. a
squared error), which are shown as they are."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from normbench.experiment.identity import LATER_KEYS


@dataclass(frozen=True)
class Metric:
    name: str = "test_error"
    lower_is_better: bool = True
    fraction: bool = True  # the task's errors are fractions (shown in percent)

    @property
    def scale(self) -> float:
        return 100.0 if self.name.endswith("error") and self.fraction else 1.0

    @property
    def label(self) -> str:
        text = self.name.replace("_", " ")
        return f"{text} (%)" if self.scale == 100 else text

    @property
    def title(self) -> str:
        """For headings: ``Test error``, ``FD`` (a short name is an acronym)."""
        return self.name.upper() if len(self.name) <= 3 else self.name.replace("_", " ").capitalize()

    @property
    def delta_unit(self) -> str:
        return "pp" if self.scale == 100 else self.name

    @property
    def direction(self) -> str:
        return "lower is better" if self.lower_is_better else "higher is better"

    def cell(self, mean: float, std: float, n: int, incomplete: bool) -> str:
        """``mean ± std`` in the metric's unit, ``(n=…)*`` where a cell has fewer seeds than its task's fullest."""
        if pd.isna(mean):
            return "—"
        s = self.scale
        text = f"{mean * s:.1f}" if pd.isna(std) else f"{mean * s:.1f} ± {std * s:.1f}"
        return f"{text} (n={n})*" if incomplete else text


def metric_groups(runs: pd.DataFrame) -> list[tuple[Metric, pd.DataFrame]]:
    """The runs split by their tasks' main metric (one group when all tasks share one), test error first."""
    keys = {
        "task.metric": LATER_KEYS["task.metric"],
        "task.lower_is_better": LATER_KEYS["task.lower_is_better"],
    }
    keys["error_is_fraction"] = True
    filled = runs.assign(**{k: runs[k].fillna(v) if k in runs else v for k, v in keys.items()})
    groups = [
        (Metric(str(name), bool(lower), bool(fraction)), runs.loc[part.index])
        for (name, lower, fraction), part in filled.groupby(list(keys), sort=False)
    ]
    return sorted(groups, key=lambda g: (g[0].name != LATER_KEYS["task.metric"], g[0].name))
