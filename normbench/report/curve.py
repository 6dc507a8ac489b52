"""The practitioner's view of a study: for each task (panel) and batch size, every norm's (line's) error
with its 95% interval at its own selected settings, the norm the validation split prefers, and each
norm's cost against that one as a paired contrast over seeds; and a figure of error against batch size,
one labelled line per norm with its band (the style of Wu & He 2018, Fig. 1).

The best norm of a batch size is chosen on the validation error (the selection criterion), never on the
test error the table reports, so the table's "cost" is an honest out-of-sample number. Costs are
descriptive (exploratory) contrasts: they are not adjusted for multiplicity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from normbench.report import figures
from normbench.report.contrasts import Contrast, cell_rows, evaluate, mean_interval
from normbench.report.select import CRITERION

CURVE_KEYS = {"panels", "lines"}
X = "batch_size"


def degenerate_reason(entries: Sequence[Mapping[str, Any]], cell: pd.DataFrame) -> str:
    """The reason of the first ``entries`` item (``{where, reason}``) that holds every run of ``cell``."""
    for entry in entries:
        try:
            inside = not cell.empty and len(cell_rows(cell, entry["where"])) == len(cell)
        except KeyError:  # a column these runs lack: the entry names other cells
            inside = False
        if inside:
            return str(entry["reason"]).strip()
    return ""


def _values(cell: pd.DataFrame, column: str, diverged_as: float | None) -> pd.Series:
    usable = cell[cell["status"].isin(["completed"] if diverged_as is None else ["completed", "diverged"])]
    values = usable[column].astype(float)
    if diverged_as is not None:
        values = values.where(usable["status"] == "completed", diverged_as)
    return values.dropna()


def curve_summary(
    frame: pd.DataFrame,
    panels: str,
    lines: str,
    metric: str,
    diverged_as: float | None = None,
    degenerate: Sequence[Mapping[str, Any]] = (),
) -> pd.DataFrame:
    """One row per (panel, batch size, line): ``n`` seeds, ``mean``/``low``/``high`` of ``metric``,
    ``val_mean`` (the criterion; a diverged run counts as 1), ``best`` (lowest ``val_mean`` of its batch
    size among lines that are not degenerate), ``cost``/``cost_low``/``cost_high`` (the paired contrast
    line − best; 0 for the best) and ``degenerate`` (the reason, or "")."""
    rows = []
    for (panel, x), part in frame.groupby([panels, X], sort=True):
        cells = {line: cell for line, cell in part.groupby(lines, sort=True)}
        reasons = {line: degenerate_reason(degenerate, cell) for line, cell in cells.items()}
        criterion = {
            line: float(_values(cell, CRITERION, 1.0).mean()) if CRITERION in cell else math.nan
            for line, cell in cells.items()
        }
        candidates = [line for line in cells if not reasons[line] and not math.isnan(criterion[line])]
        best = min(candidates, key=lambda line: criterion[line]) if candidates else None
        for line, cell in cells.items():
            mean, low, high = mean_interval(_values(cell, metric, diverged_as).to_numpy())
            cost = low_cost = high_cost = math.nan
            if best is not None and line == best:
                cost = low_cost = high_cost = 0.0
            elif best is not None:
                contrast = Contrast(f"{line} − {best}", (({lines: line}, 1.0), ({lines: best}, -1.0)))
                result = evaluate(part, contrast, metric, diverged_as=diverged_as)
                cost, low_cost, high_cost = result.mean, result.low, result.high
            rows.append(
                {
                    panels: panel,
                    X: x,
                    lines: line,
                    "n": len(_values(cell, metric, diverged_as)),
                    "mean": mean,
                    "low": low,
                    "high": high,
                    "val_mean": criterion[line],
                    "best": line == best,
                    "cost": cost,
                    "cost_low": low_cost,
                    "cost_high": high_cost,
                    "degenerate": reasons[line],
                }
            )
    return pd.DataFrame(rows)


def _number(mean: float, low: float, high: float, scale: float, sign: str = "") -> str:
    if math.isnan(mean):
        return "—"
    text = f"{mean * scale:{sign}.1f}"
    return text if math.isnan(low) else f"{text} [{low * scale:{sign}.1f}, {high * scale:{sign}.1f}]"


def curve_table(summary: pd.DataFrame, lines: str, scale: float = 100.0) -> pd.DataFrame:
    """One panel's summary as text: a row per batch size, a column per line holding ``mean [interval]``
    and, after a middle dot, the cost against the best line (``best`` for that one); ``†`` marks a
    degenerate cell; the last column names the best line."""
    table: dict[str, dict[int, str]] = {}
    best: dict[int, str] = {}
    for row in summary.itertuples(index=False):
        row = row._asdict()
        x = int(row[X])
        text = _number(row["mean"], row["low"], row["high"], scale)
        if row["best"]:
            text, best[x] = f"**{text}** · best", str(row[lines])
        elif not math.isnan(row["cost"]):
            text += f" · {_number(row['cost'], row['cost_low'], row['cost_high'], scale, '+')}"
        table.setdefault(str(row[lines]), {})[x] = text + (" †" if row["degenerate"] else "")
    out = pd.DataFrame(table).sort_index()
    out["best (validation)"] = pd.Series(best)
    out.index.name = X
    return out.fillna("—")


def render_curve(
    frame: pd.DataFrame,
    spec: Mapping[str, Any],
    metric: str,
    diverged_as: float | None,
    degenerate: Sequence[Mapping[str, Any]],
    out: Path,
    stem_name: str,
    scale: float = 100.0,
    unit: str = "pp",
) -> list[str]:
    """Markdown lines: the figure, then per panel the table; ``curve.csv`` (the numbers) beside them.
    Values are shown times ``scale`` (errors that are fractions: percent), costs in ``unit``."""
    from normbench.report.markdown import image, md_table

    panels, lines = spec.get("panels", "task"), spec.get("lines", "norm")
    summary = curve_summary(frame, panels, lines, metric, diverged_as, degenerate)
    if summary.empty:
        return []
    summary.to_csv(out / f"{stem_name}.csv", index=False, float_format="%.6g", lineterminator="\n")
    stem = out / "figures" / stem_name
    figures.metric_vs_batch(
        summary.rename(columns={panels: "task", lines: "norm"}).assign(
            incomplete=summary["degenerate"] != ""
        ),
        stem,
        band=("low", "high"),
        ylabel=metric.replace("_", " ") + (" (%)" if scale == 100 else ""),
        scale=scale,
        direct_labels=True,
    )
    text = [
        image(stem.with_suffix(figures.FIGURE_SUFFIX), out, f"{metric} against batch size"),
        "",
        f"{metric}{' (%)' if scale == 100 else ''}, mean [95% interval] over seeds at each {lines}'s own "
        f"selected settings; after the dot, its cost against the {lines} the validation error prefers at "
        f"that batch size (paired over seeds, {unit}, exploratory); † a degenerate cell (see the protocol), circled in the figure. "
        f"The numbers: `{stem_name}.csv`.",
        "",
    ]
    for panel, part in summary.groupby(panels, sort=True):
        text += [f"**{panel}**", "", md_table(curve_table(part, lines, scale)), ""]
    return text


__all__ = ["CURVE_KEYS", "curve_summary", "curve_table", "degenerate_reason", "render_curve"]
