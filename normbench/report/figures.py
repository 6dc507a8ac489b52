"""Matplotlib figures (PNG and SVG) of test error against batch size, its change against a reference
batch size, and learning curves. One colour per norm, the same in every figure and every report."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd

PALETTE = plt.get_cmap("tab20").colors
# Built-in norms get fixed, well-separated colours; any other name a stable one from its hash.
KNOWN = [
    "batchnorm",
    "groupnorm",
    "layernorm",
    "instancenorm",
    "identity",
    "ghost_batchnorm",
    "batchrenorm",
    "rmsnorm",
    "frn",
    "switchnorm",
    "evonorm_b0",
    "evonorm_s0",
    "ws_groupnorm",
    "frozen_batchnorm",
    "sync_batchnorm",
]
# the five core norms, then ghost BN in light blue (a BN variant) and batchrenorm in a dark hue of its
# own (the curve study draws it beside groupnorm), then the rest
_TAB20_ORDER = [0, 2, 4, 6, 14, 1, 8, 5, 3, 10, 12, 16, 18, 7, 9, 11, 13, 15, 17, 19]


def norm_color(name: str) -> tuple[float, float, float]:
    key = name.lower().replace("-", "_")
    index = KNOWN.index(key) if key in KNOWN else zlib.crc32(key.encode()) % len(PALETTE)
    return PALETTE[_TAB20_ORDER[index % len(_TAB20_ORDER)]]


def _style() -> None:
    plt.rcParams.update(
        {"svg.hashsalt": "normbench", "figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3}
    )


FIGURE_SUFFIX = ".svg"  # vector: sharp in a paper and on GitHub, diffable, and no larger than a PNG here


def save(fig: plt.Figure, path_stem: Path) -> Path:
    """Write ``<stem>.svg`` once (no date or creator, a fixed hash salt: reruns give the same bytes)."""
    path = path_stem.with_suffix(FIGURE_SUFFIX)
    fig.savefig(path, bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return path


def panels(
    count: int, width: float = 4.6, height: float = 3.6, **kwargs
) -> tuple[plt.Figure, list[plt.Axes]]:
    """A row of ``count`` panels (one per task or batch size)."""
    _style()
    fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False, **kwargs)
    return fig, list(axes[0])


def finish(
    fig: plt.Figure, axes: list[plt.Axes], path_stem: Path, title: str = "", legend_size: int = 8
) -> Path:
    """Legend on the last panel (if anything is labelled), title, layout, then PNG + SVG."""
    if axes[-1].get_legend_handles_labels()[0]:
        axes[-1].legend(fontsize=legend_size, frameon=False, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path_stem)


def log2_axis(ax: plt.Axes, batch_sizes: Sequence[int], label: str = "batch size") -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(batch_sizes))
    ax.set_xticklabels([str(b) for b in batch_sizes])
    ax.set_xlabel(label)


def metric_vs_batch(
    summary: pd.DataFrame,
    path_stem: Path,
    value: str = "mean",
    band: tuple[str, str] | None = ("min", "max"),
    ylabel: str = "test error (%)",
    title: str = "",
    reference_batch: int | None = None,
    scale: float = 100.0,
    direct_labels: bool = False,
) -> Path:
    """One panel per task, one line per norm (``value`` × ``scale``: errors in percent), a band over
    seeds; ``direct_labels`` names each line at its right end instead of in a legend."""
    tasks = sorted(summary["task"].unique())
    fig, axes = panels(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        part = summary[summary["task"] == task]
        ends: list[tuple[float, float, str]] = []
        for norm, rows in part.groupby("norm", sort=True):
            rows = rows.sort_values("batch_size")
            rows = rows[rows[value].notna()]
            if rows.empty:
                continue
            color = norm_color(norm)
            label = None if direct_labels else norm
            ax.plot(rows["batch_size"], rows[value] * scale, marker="o", ms=3.5, color=color, label=label)
            ends.append((float(rows["batch_size"].iloc[-1]), float(rows[value].iloc[-1] * scale), norm))
            if band:
                ax.fill_between(
                    rows["batch_size"],
                    rows[band[0]] * scale,
                    rows[band[1]] * scale,
                    color=color,
                    alpha=0.15,
                    lw=0,
                )
            marked = rows[rows.get("incomplete", False) == True]  # noqa: E712 - a boolean column
            ax.scatter(
                marked["batch_size"],
                marked[value] * scale,
                facecolors="none",
                edgecolors="red",
                s=60,
                zorder=3,
            )
        if reference_batch is not None:
            ax.axhline(0, color="grey", lw=0.8)
        log2_axis(ax, sorted(part["batch_size"].unique()))
        ax.set_title(task)
        ax.set_ylabel(ylabel)
        if direct_labels:
            _label_ends(ax, ends)
    return finish(fig, axes, path_stem, title)


def _label_ends(ax: plt.Axes, ends: Sequence[tuple[float, float, str]]) -> None:
    """Each line's name just right of its last point, nudged apart so that no two labels overlap."""
    low, high = ax.get_ylim()
    gap = 0.045 * (high - low)
    placed: list[float] = []
    for x, y, name in sorted(ends, key=lambda end: end[1]):
        y_text = max(y, placed[-1] + gap) if placed else y
        placed.append(y_text)
        ax.annotate(
            name,
            xy=(x, y),
            xytext=(x * 1.12, y_text),
            fontsize=7.5,
            color=norm_color(name),
            va="center",
            annotation_clip=False,
        )
    if ends:
        ax.set_xlim(right=max(x for x, _, _ in ends) * 2.2)  # room for the labels


def mean_curves(runs: pd.DataFrame, key: str = "test_error") -> pd.Series:
    """``key`` at each epoch, averaged over the runs (seeds) of each batch size and norm: a Series
    indexed by (batch_size, norm, epoch). Runs whose history lacks ``key`` at some point are left out."""
    columns = ["batch_size", "norm", "epoch", key]
    points = [
        (bs, norm, point["epoch"], point[key])
        for bs, norm, history in zip(runs["batch_size"], runs["norm"], runs["history"], strict=True)
        if history and all(key in p for p in history)
        for point in history
    ]
    frame = pd.DataFrame(points, columns=columns).astype({key: float})
    return frame.groupby(columns[:3])[key].mean()


def learning_curves(
    runs: pd.DataFrame, path_stem: Path, title: str = "", key: str = "test_error", scale: float = 100.0
) -> Path:
    """``key`` over training (:func:`mean_curves`; test error in percent by default) per cell: a panel
    per batch size, a line per norm."""
    batch_sizes = sorted(runs["batch_size"].unique())
    fig, axes = panels(len(batch_sizes), 2.6, 2.8, sharey=True)
    panel = dict(zip(batch_sizes, axes, strict=True))
    for (bs, norm), curve in mean_curves(runs, key).groupby(level=["batch_size", "norm"], sort=True):
        epochs = curve.index.get_level_values("epoch")
        panel[bs].plot(epochs, curve.values * scale, color=norm_color(norm), label=norm, lw=1.2)
    for bs, ax in panel.items():
        ax.set_title(f"batch {bs}", fontsize=9)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel(key.replace("_", " ") + (" (%)" if scale == 100 else ""))
    return finish(fig, axes, path_stem, title, legend_size=7)


def selection_curves(table: pd.DataFrame, key: str, path_stem: Path, title: str = "") -> Path:
    """Mean validation error (%) against the selected ``key`` (log axis), one panel per norm, one line
    per cell (batch size and any other varying setting); each cell's choice starred. ``table`` is
    :func:`normbench.report.select.candidates` for one task."""
    norms = sorted(table["norm"].unique())
    fig, axes = panels(len(norms), width=3.6, height=3.0, sharey=True)
    stats = {"task", "norm", key, "val_mean", "n", "n_diverged", "chosen"}
    others = [c for c in table.columns if c not in stats]
    varying = [c for c in others if c != "batch_size" and table[c].astype(str).nunique() > 1]
    shades = plt.get_cmap("viridis")
    values = sorted(table[key].unique())
    for ax, norm in zip(axes, norms, strict=True):
        part = table[table["norm"] == norm]
        lines = list(part.groupby(others, sort=True, dropna=False)) if others else [((), part)]
        for i, (cell, rows) in enumerate(lines):
            cell = dict(zip(others, cell if isinstance(cell, tuple) else (cell,), strict=True))
            label = ", ".join(
                [f"batch {cell['batch_size']}"] * ("batch_size" in cell)
                + [
                    f"{c.split('.')[-1]}={cell[c]:g}"
                    if isinstance(cell[c], float)
                    else f"{c.split('.')[-1]}={cell[c]}"
                    for c in varying
                    if not pd.isna(cell[c])
                ]
            )
            rows = rows.sort_values(key)
            color = shades(i / max(1, len(lines) - 1))
            ax.plot(rows[key], rows["val_mean"] * 100, marker="o", ms=3, color=color, label=label)
            best = rows[rows["chosen"]]
            ax.scatter(best[key], best["val_mean"] * 100, marker="*", s=90, color=color, zorder=3)
        ax.set_xscale("log")
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(key)
        ax.set_title(norm)
        if len(lines) > 1:
            ax.legend(fontsize=6, frameon=False)
    axes[0].set_ylabel("validation error (%)")
    return finish(fig, axes, path_stem, title, legend_size=6)


def forest(results: Sequence, path_stem: Path, scale: float = 100.0, xlabel: str = "pp") -> Path:
    """One row per claim: its mean and 95% interval (``ContrastResult``s), filled where established."""
    _style()
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(results) + 1.1))
    for y, r in enumerate(reversed(results)):
        mean, low, high = r.mean * scale, r.low * scale, r.high * scale
        color = "#1f77b4" if r.established else "#7f7f7f"
        if low == low:  # an interval exists (2 or more paired seeds)
            ax.plot([low, high], [y, y], color=color, lw=1.6)
        ax.plot([mean], [y], "o", ms=5, color=color, mfc=color if r.established else "white")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(results)), [r.name for r in reversed(results)], fontsize=7)
    ax.set_ylim(-0.7, len(results) - 0.3)
    ax.set_xlabel(f"{xlabel} (mean and 95% interval; filled: established)")
    fig.tight_layout()
    return save(fig, path_stem)
