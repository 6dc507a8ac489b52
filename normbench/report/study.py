"""A study as data: a YAML description (``conf/study/*.yaml``) names the claims a report tests, and this
module turns it into report sections — a generated protocol paragraph, per section a table of cell means
with 95% intervals and the section's paired contrasts (:mod:`normbench.report.contrasts`), Holm-adjusted
over every claim of the report. Nothing here names a norm, an option key or a paper's number: those live
in the description, so a study of other norms or tasks is a new YAML file, not new code.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from normbench.report import figures
from normbench.report.bracket import Bracket, bracket_status
from normbench.report.contrasts import (
    ALPHA,
    METRIC,
    MIN_SEEDS,
    Contrast,
    ContrastResult,
    cell_rows,
    evaluate,
    mean_interval,
    sentence,
    with_holm,
)
from normbench.report.curve import CURVE_KEYS, degenerate_reason, render_curve
from normbench.report.markdown import image, md_table, slug
from normbench.report.select import leave_one_seed_out
from normbench.schema import is_finite_number

# Each entry's keys and what each holds (a kind of :data:`KINDS`); a key set to null is left out.
STUDY_KEYS = {
    "title": "a string",
    "select": "a list of strings",
    "reference_batch": "an integer >= 1",
    "metric": "a string",
    "diverged_as": "a number",
    "derived": "a mapping",
    "sections": "a list",
    "sweeps": "a list",
    "smoke": "a list of strings",
    "equivalence_margin": "a positive number",
    "does_not_train_at": "a positive number",
    "degenerate": "a list",
    "bracket": "a mapping",
}
SWEEP_KEYS = {
    "preset": "a string",
    "full": "a mapping or false",
    "smoke": "a mapping or false",
    "large": "a mapping or false",
    "folder": "a string",  # the sweep.name it writes (default: preset)
}
SECTION_KEYS = {
    "title": "a string",
    "question": "a string",
    "where": "a mapping",
    "selected": "true or false",
    "metric": "a string",
    "unit": "a mapping",
    "table": "a mapping",
    "candidates": "a mapping",
    "claims": "a list",
    "family": "a string",
    "curve": "a mapping",
}
CLAIM_KEYS = {
    "name": "a string",
    "for_each": "a mapping of lists",
    "where": "a mapping",
    "plus": "a list of mappings",
    "minus": "a list of mappings",
    "family": "a string",
    "equivalence": "true or false",
}
UNIT_KEYS = {"scale": "a positive number", "name": "a string"}
DEGENERATE_KEYS = {"where": "a mapping", "reason": "a string"}
DERIVED_KEYS = {"history": "a string", "at_most": "a mapping"}
FAMILIES = ("primary", "exploratory")
TABLE_KEYS = {"rows", "columns", "where", "metrics"}


KINDS = {
    "a string": lambda v: isinstance(v, str),
    "a mapping": lambda v: isinstance(v, Mapping),
    "a list": lambda v: isinstance(v, list),
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "a list of mappings": lambda v: isinstance(v, list) and all(isinstance(x, Mapping) for x in v),
    "a mapping of lists": lambda v: isinstance(v, Mapping) and all(isinstance(x, list) for x in v.values()),
    "a mapping or false": lambda v: v is False or isinstance(v, Mapping),
    "an integer >= 1": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "a number": is_finite_number,
    "a positive number": lambda v: is_finite_number(v) and v > 0,
    "true or false": lambda v: isinstance(v, bool),
}


class StudyError(ValueError):
    """A study description that cannot be read: names the file, the entry and what is allowed."""


@dataclass(frozen=True)
class Unit:
    scale: float = 100.0  # errors are fractions; claims and tables show percentage points
    name: str = "pp"


@dataclass(frozen=True)
class Claim:
    contrast: Contrast
    metric: str
    unit: Unit
    selected: bool
    family: str = "primary"  # Holm within the primary family; exploratory claims are not adjusted
    equivalence: bool = False  # the claim is that the cells agree within the study's margin


@dataclass
class Section:
    title: str
    question: str = ""
    where: dict[str, Any] = field(default_factory=dict)
    selected: bool = True
    metric: str = ""
    unit: Unit = Unit()
    table: dict[str, Any] = field(default_factory=dict)
    candidates: dict[str, Any] = field(default_factory=dict)
    claims: list[dict[str, Any]] = field(default_factory=list)
    family: str = "primary"
    curve: dict[str, Any] = field(default_factory=dict)  # the practitioner's table and figure


@dataclass
class Study:
    title: str
    select: list[str]
    reference_batch: int
    metric: str
    diverged_as: float | None
    derived: dict[str, dict[str, Any]]
    sections: list[Section]
    sweeps: list[dict[str, Any]] = field(default_factory=list)  # preset, and its smoke / large grids
    smoke: list[str] = field(default_factory=list)  # overrides of every smoke sweep (e.g. a short budget)
    equivalence_margin: float | None = None  # TOST margin (in the metric's units) for "agree" claims
    does_not_train_at: float | None = None  # a cell whose mean metric is at least this did not train
    degenerate: list[dict[str, Any]] = field(default_factory=list)  # cells named with a reason
    bracket: Bracket | None = None  # the rule that extends a selected key's grid past its edges


def _check_keys(entry: Any, allowed: Iterable[str], where: str) -> None:
    if not isinstance(entry, Mapping):  # the type, not the content: a wrong file would fill the line
        raise StudyError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise StudyError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def _check_entry(entry: Any, kinds: Mapping[str, str], where: str) -> None:
    """``entry`` is a mapping of known keys, each holding its kind (null: left out)."""
    _check_keys(entry, kinds, where)
    for key, value in entry.items():
        if value is not None and not KINDS[kinds[key]](value):
            raise StudyError(f"{where}: {key}={value!r}: must be {kinds[key]}")


def load_study(path: str | Path) -> Study:
    """Read and check a study description; StudyError names the file and the entry at fault."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise StudyError(f"study description {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: not text (UnicodeDecodeError)
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise StudyError(f"study description {path}: not YAML{where}: {problem}") from None
    _check_entry(raw, STUDY_KEYS, f"study description {path}")
    raw = {key: value for key, value in raw.items() if value is not None}
    sections = []
    for i, entry in enumerate(raw.get("sections") or []):
        where = f"{path}: sections[{i}]"
        _check_entry(entry, SECTION_KEYS, where)
        entry = {key: value for key, value in entry.items() if value is not None}
        if not entry.get("title"):
            raise StudyError(f"{where}: needs a title")
        for j, claim in enumerate(entry.get("claims") or []):
            _check_entry(claim, CLAIM_KEYS, f"{where}.claims[{j}]")
            if not claim.get("name") or not (claim.get("plus") or claim.get("minus")):
                raise StudyError(f"{where}.claims[{j}]: needs a name and plus and/or minus cells")
            _check_family(claim.get("family", "primary"), f"{where}.claims[{j}]")
            if claim.get("equivalence") and raw.get("equivalence_margin") is None:
                raise StudyError(
                    f"{where}.claims[{j}]: an equivalence claim needs the study's equivalence_margin"
                )
            study_metric = raw.get("metric", "test_error")
            if claim.get("equivalence") and entry.get("metric", study_metric) != study_metric:
                raise StudyError(
                    f"{where}.claims[{j}]: an equivalence claim on metric={entry['metric']}; the study's "
                    f"equivalence_margin is in units of its metric={study_metric}"
                )
        _check_family(entry.get("family", "primary"), where)
        if "curve" in entry:
            _check_keys(entry["curve"], CURVE_KEYS, f"{where}.curve")
        for kind in ("table", "candidates"):
            if kind in entry:
                _check_keys(entry[kind], TABLE_KEYS, f"{where}.{kind}")
        if "unit" in entry:
            _check_entry(entry["unit"], UNIT_KEYS, f"{where}.unit")
        unit = Unit(**{k: v for k, v in entry.get("unit", {}).items() if v is not None})
        fields = {k: v for k, v in entry.items() if k != "unit"}
        sections.append(Section(**fields, unit=unit))
    for name, spec in (raw.get("derived") or {}).items():
        _check_entry(spec, DERIVED_KEYS, f"{path}: derived.{name}")
        if not spec.get("history") or not spec.get("at_most"):
            raise StudyError(f"{path}: derived.{name} needs history (a history key) and at_most (per task)")
        for task, target in spec["at_most"].items():
            if not is_finite_number(target):
                raise StudyError(f"{path}: derived.{name}.at_most.{task}={target!r}: must be a number")
    for i, entry in enumerate(raw.get("degenerate") or []):
        _check_entry(entry, DEGENERATE_KEYS, f"{path}: degenerate[{i}]")
        if not entry.get("where") or not entry.get("reason"):
            raise StudyError(f"{path}: degenerate[{i}] needs where (the cells) and reason")
    for i, sweep in enumerate(raw.get("sweeps") or []):
        _check_entry(sweep, SWEEP_KEYS, f"{path}: sweeps[{i}]")
        if not sweep.get("preset"):
            raise StudyError(f"{path}: sweeps[{i}] needs a preset (a file of conf/experiment/)")
    bracket = None
    if raw.get("bracket") is not None:
        try:
            bracket = Bracket.from_spec(raw["bracket"], f"{path}: bracket")
        except ValueError as exc:
            raise StudyError(str(exc)) from None
        if bracket.key not in (raw.get("select") or []):
            raise StudyError(f"{path}: bracket.key={bracket.key}: must be one of the selected keys (select)")
    return Study(
        title=raw.get("title") or path.stem,
        select=list(raw.get("select") or []),
        reference_batch=raw.get("reference_batch", 32),  # an integer >= 1: checked above
        metric=raw.get("metric", "test_error"),
        diverged_as=raw.get("diverged_as"),
        derived=dict(raw.get("derived") or {}),
        sections=sections,
        sweeps=list(raw.get("sweeps") or []),
        smoke=list(raw.get("smoke") or []),
        equivalence_margin=raw.get("equivalence_margin"),
        does_not_train_at=raw.get("does_not_train_at"),
        degenerate=list(raw.get("degenerate") or []),
        bracket=bracket,
    )


def _check_family(family: Any, where: str) -> None:
    if family not in FAMILIES:
        raise StudyError(f"{where}: family={family!r}; allowed: {', '.join(FAMILIES)}")


# --- the sweeps that produce a study's runs ------------------------------------------------------------


def sweep_params(grid: Mapping[str, Any]) -> str:
    """A grid as one Hydra override of ``hydra.sweeper.params``: ``{norm:'bn,gn',seed:'0,1'}`` (lists
    quoted, so Hydra reads them as the sweeper's strings instead of sweeping its own config)."""

    def value(v: Any) -> str:
        return "'" + ",".join(map(str, v)) + "'" if isinstance(v, list) else str(v)

    return "hydra.sweeper.params={" + ",".join(f"{k}:{value(v)}" for k, v in grid.items()) + "}"


def sweep_commands(study: Study, mode: str = "full") -> list[tuple[str, list[str]]]:
    """Per sweep of the study, its preset and the overrides of ``mode`` (full: none; smoke: the sweep's
    smoke grid and the study's smoke overrides; large: the sweep's large grid, if it has one). A sweep
    whose entry for ``mode`` is ``false`` is left out of that mode."""
    if mode not in ("full", "smoke", "large"):
        raise StudyError(f"mode={mode!r}; allowed: full, smoke, large")
    commands = []
    for sweep in study.sweeps:
        extra: list[str] = []
        if sweep.get(mode) is False:
            continue  # the sweep has no part in this mode (e.g. extra seeds in a smoke run)
        if mode != "full" and sweep.get(mode):
            extra.append(sweep_params(sweep[mode]))
        if mode == "smoke":
            extra += study.smoke
        commands.append((sweep["preset"], extra))
    return commands


def main(argv: list[str] | None = None) -> None:
    """``python -m normbench.report.study FILE [full|smoke|large]``: one line per sweep, the preset and
    its overrides separated by tabs (what scripts/small_batch_study.sh runs)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m normbench.report.study FILE [full|smoke|large]", file=sys.stderr)
        raise SystemExit(2)
    try:
        study, mode = load_study(args[0]), (args[1:2] or ["full"])[0]
        lines = ["\t".join([preset, *extra]) for preset, extra in sweep_commands(study, mode)]
        if not lines:  # the script would train nothing, then fail to report on no records
            raise StudyError(
                f"{args[0]}: every sweep is left out of {mode} mode"
                if study.sweeps
                else f"{args[0]}: lists no sweeps to train (no `sweeps:`): it describes a report only"
            )
    except StudyError as exc:
        print(f"study: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print("\n".join(lines))


# --- derived metrics -------------------------------------------------------------------------------


def first_epoch_at_most(
    history: Sequence[Mapping[str, Any]], key: str, target: float, budget: float
) -> float:
    """The epoch of the first history point whose ``key`` is at most ``target``; ``budget + 1`` when
    none is (a run that never got there is slower than any that did)."""
    for point in history:
        value = point.get(key)
        if value is not None and value <= target:
            return float(point["epoch"])
    return float(budget) + 1.0


def add_derived(runs: pd.DataFrame, derived: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One column per derived metric, computed from each run's history (NaN for tasks without a target)."""
    runs = runs.copy()
    for name, spec in derived.items():
        targets = spec["at_most"]

        def value(row: pd.Series, key: str = spec["history"], targets: Mapping = targets) -> float:
            if row["task"] not in targets or not row["history"]:
                return math.nan
            return first_epoch_at_most(row["history"], key, targets[row["task"]], row["train.epochs"])

        runs[name] = runs.apply(value, axis=1) if len(runs) else pd.Series(dtype=float)
    return runs


# --- claims -----------------------------------------------------------------------------------------


def _fill(value: Any, names: Mapping[str, Any]) -> Any:
    """``"{task}"`` -> the value itself (keeping its type); other strings are formatted; lists mapped."""
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    if not isinstance(value, str):
        return value
    fields = [f for _, f, _, _ in string.Formatter().parse(value) if f]
    if len(fields) == 1 and value == f"{{{fields[0]}}}":
        return names[fields[0]]
    return value.format(**names)


def expand(section: Section, study: Study) -> list[Claim]:
    """The section's claims with ``for_each`` expanded and every ``where`` merged into each cell."""
    claims = []
    metric = section.metric or study.metric
    for spec in section.claims:
        loops = spec.get("for_each") or {}
        for combo in itertools.product(*loops.values()):
            names = dict(zip(loops, combo, strict=True))
            common = {**section.where, **{k: _fill(v, names) for k, v in (spec.get("where") or {}).items()}}
            terms = []
            for cells, sign in ((spec.get("plus") or [], 1.0), (spec.get("minus") or [], -1.0)):
                for cell in cells:
                    selector = {**common, **{k: _fill(v, names) for k, v in cell.items()}}
                    terms.append((selector, sign))
            contrast = Contrast(_fill(spec["name"], names), tuple(terms))
            family = spec.get("family", section.family)
            equivalence = bool(spec.get("equivalence", False))
            claims.append(Claim(contrast, metric, section.unit, section.selected, family, equivalence))
    return claims


def _present_rows(runs: pd.DataFrame, where: Mapping[str, Any]) -> pd.DataFrame:
    """The runs ``where`` selects; none where it names a setting no run has (the cells cannot exist in
    these records: a study whose sections are partly trained, the GAN's settings before any GAN ran)."""
    try:
        return cell_rows(runs, where)
    except KeyError:
        return runs.iloc[:0]


def _has_runs(runs: pd.DataFrame, claim: Claim) -> bool:
    return all(not _present_rows(runs, selector).empty for selector, _ in claim.contrast.terms)


def _cell_text(selector: Mapping[str, Any], common: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_label(v)}" for k, v in selector.items() if k not in common or common[k] != v)


def exclusion(study: Study, frame: pd.DataFrame, claim: Claim, common: Mapping[str, Any]) -> str:
    """Why ``claim`` cannot be tested, or "": one of its cells is degenerate (the description names it,
    with the reason) or does not train (its mean metric at or above ``does_not_train_at``)."""
    for selector, _ in claim.contrast.terms:
        cell = cell_rows(frame, selector)
        reason = degenerate_reason(study.degenerate, cell)
        if reason:
            return f"degenerate cell {_cell_text(selector, common)}, see the protocol"
        if study.does_not_train_at is None:
            continue
        column = study.metric  # whether the runs trained, whatever evaluation the claim compares
        usable = cell[cell["status"].isin(["completed", "diverged"])]
        values = usable[column].astype(float)
        if study.diverged_as is not None:
            values = values.where(usable["status"] == "completed", study.diverged_as)
        if len(values.dropna()) and values.mean() >= study.does_not_train_at:
            scale = claim.unit.scale
            return (
                f"cell {_cell_text(selector, common)} does not train: mean {column} "
                f"{values.mean() * scale:.1f} >= {study.does_not_train_at * scale:g}"
                f"{'%' if scale == 100 else ''}"
            )
    return ""


def evaluate_claims(
    study: Study, runs: pd.DataFrame, selected: pd.DataFrame
) -> list[tuple[Section, list[tuple[Claim, ContrastResult]]]]:
    """Every claim with runs in all of its cells, evaluated on the selected runs (or on all runs where
    the section says ``selected: false``); p-values Holm-adjusted within the primary family, claims
    with a degenerate or untrained cell left out of it (and reported as not tested)."""
    planned = []
    for section in study.sections:
        for claim in expand(section, study):
            frame = selected if claim.selected else runs
            if not _has_runs(frame, claim):
                continue
            try:
                result = evaluate(
                    frame,
                    claim.contrast,
                    claim.metric,
                    diverged_as=study.diverged_as,
                    # the margin is in the study metric's units: another metric's claims test none
                    margin=study.equivalence_margin if claim.metric == study.metric else None,
                    equivalence=claim.equivalence,
                )
            except KeyError as exc:  # a metric the runs do not have
                numeric = [c for c in frame.columns if "." not in c and pd.api.types.is_float_dtype(frame[c])]
                raise StudyError(
                    f"section {section.title!r}: {exc.args[0]}; theirs: {', '.join(numeric)}"
                ) from None
            why = exclusion(study, frame, claim, section.where)
            planned.append((section, claim, dataclasses.replace(result, family=claim.family, excluded=why)))
    in_family = [i for i, (_, _, r) in enumerate(planned) if r.family == "primary" and not r.excluded]
    adjusted = with_holm([planned[i][2] for i in in_family])
    for i, result in zip(in_family, adjusted, strict=True):
        planned[i] = (*planned[i][:2], result)
    grouped: dict[int, list[tuple[Claim, ContrastResult]]] = {}
    for section, claim, result in planned:
        grouped.setdefault(id(section), []).append((claim, result))
    return [(s, grouped.get(id(s), [])) for s in study.sections]


# --- tables ------------------------------------------------------------------------------------------


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _label(value: Any) -> Any:
    """A whole float as an int (ghost batch 2, not 2.0: integer options share a column with NaN)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _interval_text(values: pd.Series, unit: Unit, n_diverged: int) -> str:
    mean, low, high = mean_interval(values.to_numpy())
    if math.isnan(mean):
        return "—"
    text = f"{mean * unit.scale:.1f}"
    if not math.isnan(low):
        text += f" [{low * unit.scale:.1f}, {high * unit.scale:.1f}]"
    return text + (f" ({n_diverged} div.)" if n_diverged else "")


def cell_table(
    runs: pd.DataFrame,
    spec: Mapping[str, Any],
    where: Mapping[str, Any],
    metric: str,
    unit: Unit,
    diverged_as: float | None,
) -> pd.DataFrame:
    """Mean [95% interval] of ``metric`` (or of each of ``spec['metrics']``) per row and column cell."""
    rows, columns = _as_list(spec.get("rows")), _as_list(spec.get("columns"))
    part = _present_rows(runs, {**where, **(spec.get("where") or {})})
    part = part[part["status"].isin(["completed"] if diverged_as is None else ["completed", "diverged"])]
    metrics = _as_list(spec.get("metrics")) or [metric]
    missing = [c for c in (*rows, *columns, *metrics) if c not in part]
    if part.empty or missing:
        return pd.DataFrame()
    out: dict[str, dict] = {}
    order: dict[str, tuple] = {}
    for keys, cell in part.groupby([*rows, *columns], sort=True, dropna=False):
        keys = tuple(map(_label, keys if isinstance(keys, tuple) else (keys,)))
        n_div = int((cell["status"] == "diverged").sum())
        for m in metrics:
            values = cell[m].astype(float)
            if diverged_as is not None:
                values = values.where(cell["status"] == "completed", diverged_as)
            column_key = (*keys[len(rows) :], m) if len(metrics) > 1 else keys[len(rows) :]
            label = " · ".join(map(str, column_key)) or m
            order.setdefault(label, (*keys[len(rows) :], metrics.index(m)))  # natural order, not first seen
            out.setdefault(label, {})[keys[: len(rows)]] = _interval_text(values.dropna(), unit, n_div)
    table = pd.DataFrame(out)
    table = table[sorted(table.columns, key=lambda label: order[label])]
    table.index = (
        table.index.set_names(rows) if len(rows) > 1 else pd.Index([k[0] for k in table.index], name=rows[0])
    )
    return table.fillna("—")


def candidates_table(
    candidates: pd.DataFrame, spec: Mapping[str, Any], where: Mapping[str, Any]
) -> pd.DataFrame:
    """Mean validation error (%) of every candidate value, chosen ones starred, diverged runs counted."""
    # a key the candidates lack does not vary across the runs, so every candidate shares its value
    selector = {k: v for k, v in {**where, **(spec.get("where") or {})}.items() if k in candidates}
    part = cell_rows(candidates, selector)
    rows, columns = _as_list(spec.get("rows")), _as_list(spec.get("columns"))
    if part.empty:
        return pd.DataFrame()
    text = part.apply(
        lambda r: (
            f"{r['val_mean'] * 100:.1f}"
            + ("*" if r["chosen"] else "")
            + (f" ({int(r['n_diverged'])} div.)" if r["n_diverged"] else "")
        ),
        axis=1,
    )
    return (
        part.assign(text=text)
        .pivot_table(index=rows, columns=columns, values="text", aggfunc="first")
        .fillna("—")
    )


# --- rendering -----------------------------------------------------------------------------------------


def _untrained_text(study: Study) -> str:
    """The study's ``does_not_train_at`` in its metric's units (errors as fractions: percent)."""
    unit = study.sections[0].unit if study.sections else Unit()
    return f"{study.does_not_train_at * unit.scale:g}{'%' if unit.scale == 100 else ''}"


def protocol(runs: pd.DataFrame, study: Study) -> str:
    """What was run, read from the records: tasks, budgets per batch size, seeds, the selection grid."""
    lines = ["## Protocol", ""]
    for task, part in runs.groupby("task", sort=True):
        budgets = []
        for bs, rows in part.groupby("batch_size", sort=True):
            by_steps = "train.budget" in rows and (rows["train.budget"] == "steps").all()
            epochs = sorted(rows["train.epochs"].dropna().unique()) if "train.epochs" in rows else []
            steps = sorted(rows["steps"].dropna().astype(int).unique())
            if by_steps:
                budgets.append(f"batch {bs}: {steps[-1] if steps else '?'} steps")
                continue
            text = f"batch {bs}: {'/'.join(f'{e:g}' for e in epochs)} epochs"
            budgets.append(text + (f" ({steps[-1]} steps)" if steps else ""))
        seeds = part.groupby([c for c in ("norm", "batch_size") if c in part])["seed"].nunique()
        lines.append(
            f"- **{task}**: {len(part)} runs; {'; '.join(budgets)}; "
            f"{seeds.min()}–{seeds.max()} seeds per cell."
            if seeds.min() != seeds.max()
            else f"- **{task}**: {len(part)} runs; {'; '.join(budgets)}; {seeds.min()} seeds per cell."
        )
    for task, part in runs.groupby("task", sort=True):
        lines += _selection_lines(task, part, study.select)
    if study.diverged_as is not None:
        lines.append(f"- A diverged run counts as {study.diverged_as:g} in tables and contrasts.")
    lines += [
        "- Every claim is a paired contrast over seeds (the same seed gives the same initialization "
        f"stream and batch order), with a Student t 95% interval (scipy.stats). A **primary** claim is "
        "*established* only where the interval excludes 0 and its p-value, Holm-adjusted within the "
        f"primary family, is below {ALPHA:g}; **exploratory** claims are not adjusted and are labelled so. "
        f"An interval from fewer than {MIN_SEEDS} seeds, or of zero width, establishes nothing.",
    ]
    unit = study.sections[0].unit if study.sections else Unit()  # errors as fractions: percent
    percent = unit.scale == 100
    if study.equivalence_margin is not None:
        margin = f"{study.equivalence_margin * unit.scale:g} {'pp' if percent else f'in {unit.name}'}"
        lines.append(
            f"- A difference that is not established is not called small: that takes two one-sided t tests "
            f"(TOST) against ±{margin}, shown beside it where the study tests it."
        )
    if study.does_not_train_at is not None:
        lines.append(
            f"- A cell whose mean {study.metric} is at or above {_untrained_text(study)} did not train: claims "
            "on it are reported as not tested, outside every family."
        )
    for entry in study.degenerate:
        where = ", ".join(f"{k}={v}" for k, v in entry["where"].items())
        lines.append(
            f"- Degenerate cells ({where}): {entry['reason'].strip()} Claims on them are not tested."
        )
    return "\n".join([*lines, ""])


def _selection_lines(task: str, part: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """Per selected key, the values a task's runs tried, and where it validated (a held-out share of
    its training set or a validation set of new draws); a task without a validation error selects
    nothing, and says so."""

    def listed(values: pd.Series) -> str:
        return ", ".join(
            f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(values.dropna().unique())
        )

    keys = [k for k in keys if k in part]
    if not keys:
        return []
    if "val_error" not in part or part["val_error"].isna().all():
        return [
            f"- **{task}**: `{k}` not selected (no validation error to select on): {listed(part[k])}."
            for k in keys
        ]
    drawn = part["data.mnist1d_val_samples"] if "data.mnist1d_val_samples" in part else pd.Series(dtype=float)
    if len(drawn) and (drawn.fillna(0) > 0).all():
        where = f"a validation set of {listed(drawn.astype(int))} new draws (`data.mnist1d_val_samples`)"
    else:
        shares = ", ".join(f"{v:.0%}" for v in sorted(part["data.val_size"].dropna().unique()))
        where = f"{shares} of the training set held out for validation (`data.val_size`, stratified)"
    return [f"- **{task}**: `{k}` chosen per cell on {where}, from: {listed(part[k])}." for k in keys]


def selection_check(runs: pd.DataFrame, study: Study) -> str:
    """The bracketing state of every cell and the leave-one-seed-out stability of its choice."""
    if not study.select or "val_error" not in runs or runs["val_error"].isna().all():
        return ""
    lines = ["## How the learning rates were chosen", ""]
    if study.bracket is not None:
        b = study.bracket
        status = bracket_status(runs, b, study.does_not_train_at, study.degenerate)
        counts = status["state"].value_counts()
        lines.append(
            f"`{b.key}` is bracketed: a cell whose best validation error sits at an edge of its grid is "
            f"extended by a factor of {b.factor:g} in that direction and rerun, within [{b.low:g}, {b.high:g}]. "
            f"Of {len(status)} cells: interior choice {counts.get('interior', 0)}, at a bound "
            f"{counts.get('at a bound', 0)}, awaiting another round {counts.get('extend', 0)}, degenerate (not "
            f"extended) {counts.get('degenerate', 0)}."
        )
        untrained = status[(status["state"] != "degenerate") & ~status["trains"]]
        if study.does_not_train_at is not None:
            lines[-1] += (
                f" Of the others, {len(untrained)} did not train at any value tried (best mean validation "
                f"error at or above {_untrained_text(study)}); they are extended like the rest."
            )
        edge = status[status["state"].isin(["at a bound", "extend"]) | status.index.isin(untrained.index)]
        if not edge.empty:
            shown = [c for c in ("task", "norm", "batch_size") if c in edge] + ["chosen", "state", "trains"]
            lines += [
                "",
                "Cells at an edge of their grid, or not trained at any value tried:",
                "",
                md_table(edge[shown].set_index(shown[0])),
                "",
            ]
    stability = leave_one_seed_out(runs, study.select)
    lines += [
        "",
        f"Leave-one-seed-out check: {int(stability['stable'].sum())} of {len(stability)} cells choose the same "
        f"value with any one seed left out of the choice (the others: {int((~stability['stable']).sum())}).",
        "",
    ]
    return "\n".join(lines)


def claims_summary(evaluated: Sequence[tuple[Section, list[tuple[Claim, ContrastResult]]]]) -> str:
    results = [(c, r) for _, claims in evaluated for c, r in claims]
    primary = [(c, r) for c, r in results if r.family == "primary" and not r.excluded]
    established = [(c, r) for c, r in primary if r.established]
    lines = [
        "## Findings",
        "",
        f"{len(established)} of {len(primary)} primary claims are established (95% interval excludes 0 — "
        "or, for an equivalence, TOST rejects — with the Holm-adjusted p below 0.05):",
        "",
    ]
    lines += [f"- {sentence(r, c.unit.scale, c.unit.name)}" for c, r in established]
    exploratory = [
        (c, r) for c, r in results if r.family == "exploratory" and not r.excluded and r.established
    ]
    if exploratory:
        lines += [
            "",
            f"Exploratory (not adjusted for multiplicity; {len(exploratory)} of "
            f"{sum(r.family == 'exploratory' and not r.excluded for _, r in results)} hold by their own test):",
            "",
            *(f"- {sentence(r, c.unit.scale, c.unit.name)}" for c, r in exploratory),
        ]
    excluded = [(c, r) for c, r in results if r.excluded]
    if excluded:
        lines += ["", f"Not tested ({len(excluded)} claim{'s' * (len(excluded) != 1)}):", ""]
        lines += [f"- {sentence(r, c.unit.scale, c.unit.name)}" for c, r in excluded]
    return "\n".join([*lines, ""])


def render_section(
    section: Section,
    claims: list[tuple[Claim, ContrastResult]],
    runs: pd.DataFrame,
    selected: pd.DataFrame,
    candidates: pd.DataFrame | None,
    study: Study,
    out: Path,
) -> str:
    frame = selected if section.selected else runs
    metric = section.metric or study.metric
    lines = [f"## {section.title}", "", section.question.strip(), ""]
    if section.curve:
        part = _present_rows(frame, section.where)
        lines += render_curve(
            part,
            section.curve,
            metric,
            study.diverged_as,
            study.degenerate,
            out,
            f"curve_{slug((section.title,))}",
            section.unit.scale,
            section.unit.name,
        )
    if section.table:
        table = cell_table(frame, section.table, section.where, metric, section.unit, study.diverged_as)
        if not table.empty:
            metrics = _as_list(section.table.get("metrics")) or [metric]
            unit = " (errors in %)" if section.unit.scale == 100 else ""
            lines += [
                f"{', '.join(metrics)}{unit}, mean [95% interval] over seeds:",
                "",
                md_table(table),
                "",
            ]
    if section.candidates and candidates is not None:
        table = candidates_table(candidates, section.candidates, section.where)
        if not table.empty:
            lines += [
                "Mean validation error (%) over seeds for every candidate (* chosen):",
                "",
                md_table(table),
                "",
            ]
    if not claims:
        missing = ["No claim of this section has runs in all of its cells.", ""] if section.claims else []
        return "\n".join([*lines, *missing])
    stem = out / "figures" / f"claims_{slug((section.title,))}"
    figures.forest([r for _, r in claims], stem, scale=claims[0][0].unit.scale, xlabel=claims[0][0].unit.name)
    n_est = sum(r.established for _, r in claims)
    family = "primary" if all(r.family == "primary" for _, r in claims) else "exploratory or mixed"
    lines += [
        image(stem.with_suffix(figures.FIGURE_SUFFIX), out, section.title),
        "",
        f"{n_est} of {len(claims)} claims established ({family} family):"
        if family == "primary"
        else f"{n_est} of {len(claims)} claims hold by their own test (exploratory, unadjusted):",
        "",
        *(f"- {sentence(r, c.unit.scale, c.unit.name)}" for c, r in claims),
        "",
    ]
    return "\n".join(lines)


def study_report(
    study: Study, runs: pd.DataFrame, selected: pd.DataFrame, candidates: pd.DataFrame | None, out: Path
) -> str:
    """The curve sections (the practitioner's table and figure) first, then the protocol, the choice of
    learning rates, the findings and the other sections in the description's order, as markdown."""
    runs = add_derived(runs, study.derived)
    selected = add_derived(selected, study.derived)
    if "error_is_fraction" in runs and not runs["error_is_fraction"].fillna(True).astype(bool).all():
        # a task whose errors are not fractions (e.g. squared errors): values as they are, in its units
        study = dataclasses.replace(
            study,
            sections=[
                dataclasses.replace(s, unit=Unit(1.0, s.metric or study.metric)) for s in study.sections
            ],
        )
    evaluated = evaluate_claims(study, runs, selected)
    evaluated = sorted(evaluated, key=lambda entry: not entry[0].curve)  # stable: curves, then the rest
    curves = [e for e in evaluated if e[0].curve]
    parts = [render_section(s, c, runs, selected, candidates, study, out) for s, c in curves]
    parts += [protocol(runs, study), selection_check(runs, study), claims_summary(evaluated)]
    parts += [
        render_section(s, c, runs, selected, candidates, study, out) for s, c in evaluated[len(curves) :]
    ]
    return "\n".join(parts)


__all__ = ["METRIC", "Study", "StudyError", "evaluate_claims", "expand", "load_study", "study_report"]


if __name__ == "__main__":
    main()
