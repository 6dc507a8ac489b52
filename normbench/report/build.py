"""``build_report``: run records → runs.csv, summary.csv, figures and report.md in one folder."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import pandas as pd

from normbench.report import figures
from normbench.report.html import render_html
from normbench.report.identical import identical_section
from normbench.report.load import read_records, record_paths, runs_frame
from normbench.report.markdown import escaped_pipes, facet_title, image, md_table, norm_by_batch, slug
from normbench.report.metric import Metric, metric_groups
from normbench.report.select import CRITERION, as_keys, check_keys, select_on_validation
from normbench.report.study import Study, load_study, study_report
from normbench.report.tables import (
    LATE_FRACTION,
    STILL_FALLING,
    STILL_FALLING_ERROR,
    cell_columns,
    convergence,
    facet_columns,
    matches,
    summarize,
    with_reference_delta,
)

log = logging.getLogger(__name__)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    path.write_text(df.to_csv(index=False, float_format="%.6g", lineterminator="\n"))


TEST_ERROR = Metric()


def general_sections(
    runs: pd.DataFrame, summary: pd.DataFrame, out: Path, reference_batch: int, metric: Metric = TEST_ERROR
) -> str:
    fig_dir = out / "figures"
    facets = facet_columns(summary)
    lines: list[str] = []
    parts = list(summary.groupby(facets, sort=True, dropna=False)) if facets else [((), summary)]
    # the largest grids first; a facet with a single batch size has no curve to draw (e.g. one ghost size)
    parts = sorted((p for p in parts if p[1]["batch_size"].nunique() > 1), key=lambda p: -len(p[1]))
    for values, part in parts:
        values = values if isinstance(values, tuple) else (values,)
        name = slug(values)
        title = facet_title(facets, values)
        lines += [f"## {metric.title} vs batch size{f' ({title})' if title else ''}", ""]
        prefix = "" if metric == TEST_ERROR else f"{metric.name}_"
        stem = fig_dir / f"{prefix or 'error_'}vs_batch_{name}"
        figures.metric_vs_batch(part, stem, ylabel=metric.label, title=title, scale=metric.scale)
        lines += [image(stem.with_suffix(figures.FIGURE_SUFFIX), out, f"{metric.label} vs batch size"), ""]
        delta_stem = fig_dir / f"{prefix}delta_vs_batch{reference_batch}_{name}"
        figures.metric_vs_batch(
            part.assign(mean=part["delta_vs_ref"]),
            delta_stem,
            band=None,
            ylabel=f"Δ {metric.name.replace('_', ' ')} vs batch {reference_batch} ({metric.delta_unit})",
            title=title,
            reference_batch=reference_batch,
            scale=metric.scale,
        )
        lines += [
            image(delta_stem.with_suffix(figures.FIGURE_SUFFIX), out, f"change vs batch {reference_batch}"),
            "",
        ]
        for task, cells in part.groupby("task", sort=True, dropna=False):
            lines += [f"### {task}{f' ({title})' if title else ''}", ""]
            unit = " (%)" if metric.scale == 100 else ""
            lines += [f"{metric.title}{unit}, mean ± std over seeds ({metric.direction}):", ""]
            lines += [
                md_table(norm_by_batch(cells, lambda r: metric.cell(r.mean, r.std, r.n, r.incomplete))),
                "",
            ]
            lines += [
                f"Change against batch {reference_batch} ({metric.delta_unit}; Wu & He 2018, Table 2, last row):",
                "",
            ]
            lines += [
                md_table(
                    norm_by_batch(
                        cells,
                        lambda r: "—" if pd.isna(r.delta_vs_ref) else f"{r.delta_vs_ref * metric.scale:+.1f}",
                    )
                ),
                "",
            ]
            sel = runs["task"] == task
            for col, val in zip(facets, values, strict=True):
                sel &= matches(runs[col], val)
            if "history" in runs and sel.any():
                curve_stem = fig_dir / f"curves_{slug((task, *values))}"
                figures.learning_curves(
                    runs[sel],
                    curve_stem,
                    title=f"{task} {title}".strip(),
                    key=metric.name,
                    scale=metric.scale,
                )
                lines += [
                    image(curve_stem.with_suffix(figures.FIGURE_SUFFIX), out, f"learning curves {task}"),
                    "",
                ]
    return "\n".join(lines)


def layers_section(runs: pd.DataFrame) -> str:
    """What norm layers reported about themselves (``extra_metrics``: e.g. channels per group, a
    learned mixture), per layer, averaged over each task and norm's completed runs."""
    if "layers" not in runs:
        return ""
    done = runs[(runs["status"] == "completed") & runs["layers"].map(bool)]
    if done.empty:
        return ""
    lines = [
        "## What the norm layers report",
        "",
        "Per layer, mean over the task and norm's completed runs.",
        "",
    ]
    for (task, norm), rows in done.groupby(["task", "norm"], sort=True):
        per_layer = pd.DataFrame(
            [{"layer": name, **values} for layers in rows["layers"] for name, values in layers.items()]
        )
        table = per_layer.groupby("layer", sort=False).mean().round(3)
        lines += [f"### {task}, {norm} ({len(rows)} runs)", "", md_table(table), ""]
    return "\n".join(lines)


def convergence_section(runs: pd.DataFrame) -> str:
    """Cells whose runs were still improving at the end of training, from their histories."""
    if "history" not in runs:
        return ""
    table = convergence(runs)
    if table.empty or (table["n"] == 0).all():
        return ""
    rule = (
        f"over the last {LATE_FRACTION:.0%} of training, their validation error (training loss where a run has "
        f"no validation split) fell on average by more than {STILL_FALLING:.0%} of its value and more than "
        f"{STILL_FALLING_ERROR * 100:g} percentage points, with a 95% t interval over their runs above 0"
    )
    lines = ["## Convergence", ""]
    flagged = table[table["flagged"]]
    if flagged.empty:
        return "\n".join(
            [*lines, f"No cell was still improving at the end of training (the rule: {rule}).", ""]
        )
    shown = ["task", "norm", "batch_size", *facet_columns(table), "train_error", "n"]
    view = flagged[shown].assign(
        train_error=(flagged["train_error"] * 100).round(1),
        drop=[
            f"{m * 100:.2f} pp [{lo * 100:.2f}, {hi * 100:.2f}]"
            if measure == "val_error"
            else f"loss {m:.3g} [{lo:.3g}, {hi:.3g}]"
            for measure, m, lo, hi in flagged[["measure", "drop", "drop_low", "drop_high"]].itertuples(
                index=False
            )
        ],
    )
    view = view.rename(
        columns={"train_error": "final train error (%)", "n": "runs", "drop": "late drop, 95% CI"}
    )
    lines += [
        f"{len(flagged)} of {len(table)} cells ({len(flagged) / len(table):.0%}) were still improving: {rule}. "
        "Their numbers describe training that was cut short.",
        "",
        view.to_markdown(index=False),
        "",
    ]
    return "\n".join(lines)


def problems_section(runs: pd.DataFrame, summary: pd.DataFrame, skipped: Sequence[str]) -> str:
    lines = ["## Incomplete data", ""]
    incomplete = summary[summary["incomplete"]]
    if (
        incomplete.empty
        and summary["n_diverged"].sum() == 0
        and summary["n_failed"].sum() == 0
        and not skipped
    ):
        return "\n".join(
            [*lines, "Every cell has the same number of completed seeds; no run diverged or failed.", ""]
        )
    if not incomplete.empty:
        lines += [
            "Cells with fewer completed seeds than most cells of their task (marked * in the tables, "
            "circled in the figures):",
            "",
        ]
        cols = [c for c in summary.columns if c not in ("mean", "std", "median", "min", "max", "incomplete")]
        lines += [incomplete[cols].to_markdown(index=False), ""]
    bad = runs[runs["status"] != "completed"]
    if not bad.empty:
        cols = [c for c in ("task", "norm", "batch_size", "seed", "status", "error", "path") if c in bad]
        table = escaped_pipes(bad[cols].fillna(""))
        lines += ["Runs that diverged or failed:", "", table.to_markdown(index=False), ""]
    if skipped:
        lines += ["Result files skipped as unreadable or partial:", "", *(f"- {s}" for s in skipped), ""]
    return "\n".join(lines)


def replaced_outputs(out: Path) -> list[str]:
    """What publishing a report into ``out`` replaces or removes, of what is there now."""
    names = ["figures", *OUTPUT_TABLES, "report.html", "report.md"]
    return [n for n in names if (out / n).exists()] + sorted(p.name for p in out.glob(CURVE_TABLES))


def holds_a_report(out: Path) -> bool:
    """Is ``out`` a folder normbench-report wrote into: its report.md carries the header's signature, or
    a report was being moved in when its process ended (the mark :func:`publish` leaves meanwhile)."""
    if (out / PUBLISHING).exists():
        return True
    try:
        with open(out / "report.md", errors="replace") as f:
            return SIGNATURE in f.read(20_000)
    except OSError:
        return False


def check_output_folder(out: Path) -> None:
    """ValueError where a report would replace files in ``out`` that no normbench report made (a user's
    own figures/ or report.md): the report goes into a new, empty or earlier report's folder."""
    if not out.is_dir():
        return
    found = replaced_outputs(out)
    if found and not holds_a_report(out):
        raise ValueError(
            f"{out}: holds {', '.join(found)}, which a report there would replace, and no report of "
            "normbench-report; give a new or empty folder, or one of its earlier reports"
        )


def publish(staging: Path, out: Path) -> None:
    """Move a finished report from ``staging`` into ``out``: the figures folder is swapped whole, then
    the tables, then report.md. Outputs of an earlier report that this one does not make are removed.
    Meanwhile ``out`` holds :data:`PUBLISHING`, so that a process ended halfway leaves a folder the
    next report still recognizes as its own."""
    (out / PUBLISHING).touch()
    figures_dir, old = out / "figures", out / f".figures-old-{staging.name}"
    if figures_dir.exists():
        os.replace(figures_dir, old)
    os.replace(staging / "figures", figures_dir)
    shutil.rmtree(old, ignore_errors=True)
    curves = {p.name for folder in (staging, out) for p in folder.glob(CURVE_TABLES)}
    for name in (*OUTPUT_TABLES, *sorted(curves), "report.html", "report.md"):
        if (staging / name).exists():
            os.replace(staging / name, out / name)
        else:
            (out / name).unlink(missing_ok=True)
    (out / PUBLISHING).unlink()


OUTPUT_TABLES = ("runs.csv", "runs.parquet", "summary.csv", "selection.csv")
CURVE_TABLES = "curve_*.csv"  # one per curve section of a study (normbench.report.curve)
PUBLISHING = ".normbench-report-publishing"
SIGNATURE = "Data: [runs.csv](runs.csv), [summary.csv](summary.csv). Built with "  # in report.md's header


def selection_section(table: pd.DataFrame, keys: Sequence[str], cells: list[str], out: Path) -> str:
    """The choices made on the validation split: a table per task and, for one numeric key, a figure of
    validation error against it."""
    keys_text = ", ".join(f"`{k}`" for k in keys)
    lines = [
        "## Selected on the validation split",
        "",
        f"Per cell, the value of {keys_text} with the lowest mean {CRITERION} over seeds (a diverged run "
        "counts as error 1; ties go to the smaller value); every table and figure below shows the test "
        "error of that choice. The test set chose nothing. All candidates: [selection.csv](selection.csv).",
        "",
    ]
    chosen = table[table["chosen"]]
    shown = [c for c in cells if c != "task"] + list(keys)
    for task, rows in chosen.groupby("task", sort=True):
        if rows["val_mean"].isna().all():  # a task without the validation metric (a GAN's): nothing chosen
            lines += [f"### {task}", "", f"No {CRITERION} in these runs: nothing was chosen.", ""]
            continue
        fixed = ("norm", "batch_size", *keys)  # and whatever varies within this task
        columns = [c for c in shown if c in fixed or rows[c].astype(str).nunique() > 1]
        view = rows[columns].assign(
            **{"validation error (%)": (rows["val_mean"] * 100).round(1), "n": rows["n"]}
        )
        lines += [f"### {task}", "", md_table(view), ""]
        if len(keys) == 1 and pd.api.types.is_numeric_dtype(table[keys[0]]):
            stem = out / "figures" / f"selection_{slug((task, keys[0]))}"
            figures.selection_curves(table[table["task"] == task], keys[0], stem, title=task)
            lines += [
                image(stem.with_suffix(figures.FIGURE_SUFFIX), out, f"validation error vs {keys[0]}"),
                "",
            ]
    return "\n".join(lines)


def build_report(
    dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    reference_batch: int | None = None,
    title: str = "normbench report",
    notes: str = "",
    select: str | Sequence[str] = (),
    study: str | os.PathLike[str] | None = None,
    html: bool = False,
) -> Path:
    """Read every run under ``dirs`` and write runs.csv (and runs.parquet with pyarrow), summary.csv,
    figures/ and report.md under ``out``. Returns the path of report.md.

    ``select`` (config keys such as ``("optim.lr",)``): per cell, keep the runs of the value with the
    lowest mean validation error (:mod:`normbench.report.select`), list the choices in selection.csv
    and the report, and tabulate the test error of those runs.

    ``study`` (a description such as ``conf/study/small_batch.yaml``, :mod:`normbench.report.study`):
    its title, selection keys and reference batch replace the arguments', and the report opens with its
    protocol, findings and claim sections.

    ``html``: also report.html, the same report as one file with its figures embedded.

    ``reference_batch``: the batch size each cell's change is measured against; one the runs do not
    have is refused. Left out: 32 (Wu & He 2018's) where the runs have it, else their largest.

    The report is built in a temporary folder inside ``out`` and moved into place only when complete,
    so a failure leaves the previous report as it was; a folder holding outputs' names (figures/,
    report.md, ...) that no report made is refused before anything is read (ValueError). Invalid record
    files are skipped with one warning each and listed in the report."""
    dirs, out = record_paths([dirs], "build_report"), Path(out)
    for name, value in (("title", title), ("notes", notes)):
        if not isinstance(value, str):  # a list of notes failed after every figure was drawn
            raise TypeError(f"build_report: {name} must be text (markdown), got {type(value).__name__}")
    if not isinstance(html, bool):
        raise TypeError(f"build_report: html must be True or False, got {html!r}")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: is a file; the report needs a folder")
    check_output_folder(out)
    described = load_study(study) if study is not None else None  # before anything is read or written
    if described is not None:
        title, select, reference_batch = described.title, described.select, described.reference_batch
    records, skipped = read_records(dirs)
    for message in skipped:
        log.warning(message)
    runs = runs_frame(records, with_history=True)
    if runs.empty:
        packed = [str(Path(d, "records.jsonl")) for d in dirs if Path(d, "records.jsonl").is_file()]
        hint = (
            f" (a study's packed records are read from the file itself: {', '.join(packed)})"
            if packed
            else ""
        )
        raise ValueError(f"no valid run records (result.json) found under {', '.join(map(str, dirs))}{hint}")
    if select:
        select = as_keys(runs, select)
        check_keys(runs, select)  # before anything is written
    if described is None:
        reference_batch = choose_reference_batch(runs["batch_size"], reference_batch)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        _write_report(runs, skipped, dirs, staging, reference_batch, title, notes, select, described)
        if html:
            (staging / "report.html").write_text(render_html(staging / "report.md"))
        publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out.iterdir()):  # a failed first report leaves no empty folder
            out.rmdir()
    return out / "report.md"


def choose_reference_batch(batch_sizes: pd.Series, requested: int | None) -> int:
    """``requested`` if the runs have that batch size (a ValueError names it and theirs if not); without
    one, 32 where the runs have it, else their largest. A study's own reference batch is not checked:
    its report is built while its grid is still training (dashes mark the cells without one)."""
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int)):
        raise TypeError(f"reference_batch must be a batch size (an integer) or None, got {requested!r}")
    have = sorted(int(b) for b in batch_sizes.dropna().unique())
    if requested is None:
        return 32 if 32 in have or not have else have[-1]
    if requested not in have:
        raise ValueError(
            f"reference batch {requested}: not a batch size of these runs (theirs: {', '.join(map(str, have))})"
        )
    return requested


REPORT_LIBRARIES = ("numpy", "pandas", "scipy", "matplotlib")  # what computes and draws the numbers


def built_with() -> str:
    """The versions of the libraries a report's numbers and figures come from (``reports/constraints.txt``
    pins them for the committed reports)."""
    return ", ".join(f"{name} {version(name)}" for name in REPORT_LIBRARIES)


def _write_report(
    runs: pd.DataFrame,
    skipped: Sequence[str],
    dirs: Sequence[str | os.PathLike[str]],
    out: Path,
    reference_batch: int,
    title: str,
    notes: str,
    select: Sequence[str] = (),
    described: Study | None = None,
) -> None:
    (out / "figures").mkdir()
    table = runs.drop(columns=["history", "layers"], errors="ignore")
    write_csv(table, out / "runs.csv")
    with contextlib.suppress(ImportError):  # Parquet only where pyarrow (or fastparquet) is installed
        table.to_parquet(out / "runs.parquet", index=False)
    chosen_section, candidates, all_runs = "", None, runs
    if select:
        cells = [c for c in cell_columns(runs) if c not in select]
        runs, candidates = select_on_validation(runs, select)
        write_csv(candidates, out / "selection.csv")
        chosen_section = selection_section(candidates, select, cells, out)
    groups = metric_groups(runs)
    summaries = [with_reference_delta(summarize(part, m.name), reference_batch) for m, part in groups]
    summary = pd.concat(
        [s.assign(metric=m.name) for (m, _), s in zip(groups, summaries, strict=True)], ignore_index=True
    )
    write_csv(summary, out / "summary.csv")
    tasks_by_metric = "; ".join(
        f"`{m.name}` ({m.direction}) for {', '.join(sorted(part['task'].unique()))}" for m, part in groups
    )
    counts = all_runs["status"].value_counts()
    errors_shown = "Errors are fractions in the CSV files and percent here;"
    if not all(m.fraction for m, _ in groups):
        errors_shown = "Error rates are fractions in the CSV files and percent here (errors a task does not give as fractions, as they are);"
    chosen = f"; the {len(runs)} of the chosen values are tabulated below" if select else ""
    header = [
        f"# {title}",
        "",
        f"{len(all_runs)} runs ({', '.join(f'{counts.get(s, 0)} {s}' for s in ('completed', 'diverged', 'failed'))}) "
        f"from {', '.join(f'`{d}`' for d in dirs)}{chosen}. Main metric: {tasks_by_metric}. {errors_shown} "
        f"bands in the figures span the seeds (min to max). {SIGNATURE}{built_with()}.",
        "",
    ]
    body = []
    if described is not None:
        body.append(study_report(described, all_runs, runs, candidates, out))
    body.append(chosen_section)
    if described is not None:
        body.append("# All cells\n")
    for (metric, part), part_summary in zip(groups, summaries, strict=True):
        body.append(general_sections(part, part_summary, out, reference_batch, metric))
    body.append(identical_section(all_runs))
    body.append(layers_section(runs))
    body.append(convergence_section(runs))
    body.append(problems_section(runs, summary, skipped))
    if notes:
        body.append(f"## Notes\n\n{notes.strip()}\n")
    (out / "report.md").write_text("\n".join(header + [b for b in body if b]))
