"""Report sections of the small-batch stability study: the train-test inconsistency of batch
statistics, non-i.i.d. batches, the normalization (ghost) batch, and a reading against the literature.

Each section only appears when the runs it needs are present.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from normbench.report import figures
from normbench.report.markdown import image, md_table

EVALS = {
    "test_error": "EMA (running) statistics",
    "test_error_precise_bn": "PreciseBN population statistics",
    "test_error_minibatch": "mini-batch statistics",
}
GHOST = "norm.ghost_batch_size"
BUDGET = "train.budget"
SAMPLER = "data.sampler"
# Wu & He 2018, Table 2: ResNet-50 ImageNet validation error (%) at 32 and 2 images per GPU.
ANCHOR = {"BN": (23.6, 34.7), "GN": (24.1, 24.1)}


def main_grid(runs: pd.DataFrame) -> pd.DataFrame:
    """i.i.d. runs whose normalization batch is the optimisation batch (no ghost batches)."""
    keep = (
        (runs["status"] == "completed")
        & (runs.get(SAMPLER, "iid") == "iid")
        & (runs["norm"] != "ghost_batchnorm")
    )
    if GHOST in runs:
        keep &= runs[GHOST].isna()
    return runs[keep]


def _seed_stats(df: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    return df.groupby(keys, sort=True)[metric].agg(["mean", "std", "min", "max", "count"]).reset_index()


def inconsistency_section(runs: pd.DataFrame, summary: pd.DataFrame, out: Path, reference_batch: int) -> str:
    if "test_error_precise_bn" not in runs:
        return ""
    df = main_grid(runs)
    df = df[df["test_error_precise_bn"].notna() & (df[BUDGET] == "epochs")]
    if df.empty:
        return ""
    lines = [
        "## Train-test inconsistency of batch statistics (epochs budget)",
        "",
        "Test error of the batch-dependent norms evaluated three ways (Wu & Johnson 2021): with the EMA "
        "running statistics (the usual eval mode), with PreciseBN population statistics re-estimated over "
        "the training set with frozen weights, and with mini-batch statistics of i.i.d. test batches of "
        "the training batch size. Lines are means over seeds, bands span the seeds.",
        "",
    ]
    tasks = sorted(df["task"].unique())
    fig, axes = figures.panels(len(tasks))
    styles = dict(zip(EVALS, ["-", "--", ":"], strict=True))
    for ax, task in zip(axes, tasks, strict=True):
        part = df[df["task"] == task]
        for norm, rows in part.groupby("norm", sort=True):
            for metric, label in EVALS.items():
                stats = _seed_stats(rows, ["batch_size"], metric)
                color = figures.norm_color(norm)
                ax.plot(
                    stats["batch_size"],
                    stats["mean"] * 100,
                    styles[metric],
                    color=color,
                    marker="o",
                    ms=3,
                    label=f"{norm}: {label}",
                )
                ax.fill_between(
                    stats["batch_size"], stats["min"] * 100, stats["max"] * 100, color=color, alpha=0.08, lw=0
                )
        figures.log2_axis(ax, sorted(part["batch_size"].unique()))
        ax.set_title(task)
        ax.set_ylabel("test error (%)")
    stem = out / "figures" / "inconsistency"
    figures.finish(fig, axes, stem, legend_size=7)
    lines += [image(stem.with_suffix(".png"), out, "train-test inconsistency"), ""]
    for task in tasks:
        part = df[(df["task"] == task)]
        means = part.groupby(["norm", "batch_size"])[
            [*EVALS, "running_mean_rel_l2", "running_var_rel_l2"]
        ].mean()
        table = pd.DataFrame(
            {
                "EMA": (means["test_error"] * 100).map("{:.1f}".format),
                "PreciseBN": (means["test_error_precise_bn"] * 100).map("{:.1f}".format),
                "mini-batch": (means["test_error_minibatch"] * 100).map("{:.1f}".format),
                "EMA − PreciseBN (pp)": ((means["test_error"] - means["test_error_precise_bn"]) * 100).map(
                    "{:+.1f}".format
                ),
                "running mean rel. L2": means["running_mean_rel_l2"].map("{:.3f}".format),
                "running var rel. L2": means["running_var_rel_l2"].map("{:.3f}".format),
            }
        )
        lines += [f"### {task}: test error (%) by evaluation", "", md_table(table), ""]
    return "\n".join(lines)


def noniid_section(runs: pd.DataFrame, summary: pd.DataFrame, out: Path, reference_batch: int) -> str:
    if SAMPLER not in runs or not (runs[SAMPLER] == "class_grouped").any():
        return ""
    grouped = runs[(runs[SAMPLER] == "class_grouped") & (runs["status"] == "completed")]
    iid = main_grid(runs)
    keys = ["task", BUDGET, "norm", "batch_size"]
    a = grouped.groupby(keys)["test_error"].agg(["mean", "std", "count"])
    b = iid.groupby(keys)["test_error"].agg(["mean", "std"])
    table = a.join(b.add_suffix("_iid"), how="left")
    cols = {
        "i.i.d. batches": table.apply(lambda r: _pm(r["mean_iid"], r["std_iid"]), axis=1),
        "class-grouped batches": table.apply(lambda r: _pm(r["mean"], r["std"]), axis=1),
        "change (pp)": ((table["mean"] - table["mean_iid"]) * 100).map(
            lambda v: "—" if pd.isna(v) else f"{v:+.1f}"
        ),
    }
    if "test_error_minibatch_sorted" in grouped:
        sorted_err = grouped.groupby(keys)["test_error_minibatch_sorted"].mean()
        cols["class-sorted test batches, batch stats"] = (sorted_err * 100).map(
            lambda v: "—" if pd.isna(v) else f"{v:.1f}"
        )
    classes = sorted(grouped["data.classes_per_batch"].dropna().unique())
    k = " or ".join(str(int(c)) for c in classes) + " classes" if classes else "a few classes"
    lines = [
        "## Non-i.i.d. batches (Batch Renorm's stress test)",
        "",
        f"Training batches hold {k} each (`data.sampler=class_grouped`); test error (%) in eval mode "
        "against the i.i.d. runs of the same task, budget, norm and batch size, mean ± std over "
        "seeds. The last column evaluates batch-dependent norms on class-sorted test batches with "
        "mini-batch statistics, which exposes a network that reads the label through batch statistics.",
        "",
        md_table(pd.DataFrame(cols)),
        "",
    ]
    return "\n".join(lines)


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "—"
    return f"{mean * 100:.1f}" if pd.isna(std) else f"{mean * 100:.1f} ± {std * 100:.1f}"


def ghost_section(runs: pd.DataFrame, summary: pd.DataFrame, out: Path, reference_batch: int) -> str:
    if GHOST not in runs or runs[GHOST].isna().all():
        return ""
    ghost = runs[runs[GHOST].notna() & (runs["status"] == "completed")]
    bn = main_grid(runs)
    bn = bn[bn["norm"] == "batchnorm"]
    opt_batch = ", ".join(map(str, sorted(ghost["batch_size"].unique())))
    tasks = sorted(ghost["task"].unique())
    fig, axes = figures.panels(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        for budget, style in zip(sorted(ghost[BUDGET].unique()), ("-", ":"), strict=False):
            g = _seed_stats(ghost[(ghost["task"] == task) & (ghost[BUDGET] == budget)], [GHOST], "test_error")
            color = figures.norm_color("ghost_batchnorm")
            label = f"ghost BN, optimisation batch {opt_batch} ({budget})"
            ax.plot(g[GHOST], g["mean"] * 100, style, marker="o", ms=3, color=color, label=label)
            ax.fill_between(g[GHOST], g["min"] * 100, g["max"] * 100, color=color, alpha=0.12, lw=0)
        b = _seed_stats(bn[(bn["task"] == task) & (bn[BUDGET] == "epochs")], ["batch_size"], "test_error")
        if not b.empty:
            label = "BN, optimisation batch = normalization batch (epochs)"
            ax.plot(
                b["batch_size"],
                b["mean"] * 100,
                "--o",
                ms=3,
                color=figures.norm_color("batchnorm"),
                label=label,
            )
        figures.log2_axis(ax, sorted(g[GHOST].astype(int).unique()), "normalization batch size")
        ax.set_title(task)
        ax.set_ylabel("test error (%)")
    stem = out / "figures" / "ghost_batch"
    figures.finish(fig, axes, stem, legend_size=7)
    table = (
        ghost.groupby(["task", BUDGET, GHOST])["test_error"]
        .agg(["mean", "std"])
        .apply(lambda r: _pm(r["mean"], r["std"]), axis=1)
    )
    table = table.unstack(GHOST)
    table.columns = [str(int(c)) for c in table.columns]
    return "\n".join(
        [
            "## Normalization batch vs optimisation batch (Ghost BatchNorm)",
            "",
            "The optimisation batch (and so the number of steps, the learning rate and the gradient noise) "
            "is fixed; only the number of samples each BatchNorm normalizes over changes. The dashed line "
            "is plain BatchNorm where both batches shrink together (epochs budget); solid and dotted ghost "
            "lines are the epochs and steps budgets.",
            "",
            image(stem.with_suffix(".png"), out, "ghost batch"),
            "",
            "Test error (%) by normalization (ghost) batch size:",
            "",
            md_table(table),
            "",
        ]
    )


def reading_section(runs: pd.DataFrame, summary: pd.DataFrame, out: Path, reference_batch: int) -> str:
    """Our small-batch effect beside Wu & He 2018, Table 2, with every number computed from the runs."""
    df = main_grid(runs)
    small = int(df["batch_size"].min()) if not df.empty else None
    if small is None or small >= reference_batch or not (df["norm"] == "batchnorm").any():
        return ""
    stats = _seed_stats(df, ["task", BUDGET, "norm", "batch_size"], "test_error")
    rows, visible = [], []
    for (task, budget), part in stats.groupby(["task", BUDGET], sort=True):
        cell = {}
        for norm, r in part.groupby("norm"):
            ref, low = r[r["batch_size"] == reference_batch], r[r["batch_size"] == small]
            if ref.empty or low.empty:
                continue
            cell[norm] = (ref.iloc[0], low.iloc[0])
        if "batchnorm" not in cell:
            continue
        ref, low = cell["batchnorm"]
        delta = (low["mean"] - ref["mean"]) * 100
        row = {
            "task": task,
            "budget": budget,
            f"BN {reference_batch}": f"{ref['mean'] * 100:.1f}",
            f"BN {small}": f"{low['mean'] * 100:.1f}",
            "BN Δ (pp)": f"{delta:+.1f}",
        }
        for norm in ("groupnorm", "layernorm", "instancenorm", "identity"):
            if norm in cell:
                r32, r2 = cell[norm]
                row[f"{norm} Δ (pp)"] = f"{(r2['mean'] - r32['mean']) * 100:+.1f}"
        rows.append(row)
        gn_delta = (
            (cell["groupnorm"][1]["mean"] - cell["groupnorm"][0]["mean"]) * 100
            if "groupnorm" in cell
            else 0.0
        )
        if low["min"] > ref["max"] and delta > gn_delta + 2:
            visible.append(
                f"{task} ({budget} budget): BN {ref['mean'] * 100:.1f}% → {low['mean'] * 100:.1f}% (seed ranges do not overlap), GN Δ {gn_delta:+.1f} pp"
            )
    if not rows:
        return ""
    bn, gn = ANCHOR["BN"], ANCHOR["GN"]
    lines = [
        "## Reading: our CPU-scale results beside the published ones",
        "",
        f"Wu & He 2018 (Table 2; ResNet-50, ImageNet, BN statistics per GPU) report BN's validation error "
        f"rising from {bn[0]}% at 32 images per GPU to {bn[1]}% at 2 ({bn[1] - bn[0]:+.1f} pp) while GN stays "
        f"at {gn[0]}–{gn[1]}%. The same comparison here, test error (%) at batch {reference_batch} and {small} "
        "and the change of every norm (mean over seeds):",
        "",
        md_table(pd.DataFrame(rows).set_index(["task", "budget"])),
        "",
    ]
    if visible:
        lines += [
            "BatchNorm's small-batch failure is clearly visible (its seed range at the smallest batch lies "
            "above its seed range at the reference batch, and it degrades more than GN by over 2 pp) in:",
            "",
            *(f"- {v}" for v in visible),
            "",
        ]
    else:
        lines += ["In no setting here does BatchNorm's small-batch degradation exceed the seed spread.", ""]
    lines += [
        f"How to read the differences. These are {_budgets(df)} runs of small models on "
        f"{', '.join(sorted(df['task.dataset'].dropna().unique())) if 'task.dataset' in df else 'small data'}, "
        "not 100-epoch ResNet-50s on ImageNet, so absolute errors are not comparable; the direction and "
        "the relative size of the effects are. BatchNorm in the MLP normalizes every feature with the "
        "statistics of only N values, while in the conv nets each channel pools N × 40 positions, so the "
        "conv nets' batch statistics are far less noisy at the same batch size and BN degrades later "
        "there. The steps budget gives small batches far fewer samples, so it mixes a budget effect into "
        "every norm's curve, including the batch-independent ones; the epochs budget gives small batches "
        "more (noisier) steps. Where EMA and PreciseBN errors differ, part of BN's loss is the stale or "
        "mismatched running estimate rather than training noise (Wu & Johnson 2021); where mini-batch "
        "evaluation is worse than both, the network depends on the batch it is evaluated with.",
        "",
    ]
    return "\n".join(lines)


def _budgets(df: pd.DataFrame) -> str:
    """ "3-epoch (or 400-step)": the training budgets of the runs, read from their configs."""
    parts = []
    for budget, unit in (("epochs", "epoch"), ("steps", "step")):
        rows = df[df[BUDGET] == budget] if BUDGET in df else df.iloc[:0]
        column = f"train.{budget}"
        if not rows.empty and column in rows:
            parts.append("/".join(str(int(v)) for v in sorted(rows[column].dropna().unique())) + f"-{unit}")
    return " (or ".join(parts) + ")" * (len(parts) - 1) if parts else "short"


SECTIONS = (reading_section, inconsistency_section, noniid_section, ghost_section)
