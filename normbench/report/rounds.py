"""The next bracketing round of a study: the sweeps that extend every cell whose best learning rate
sits at an edge of its grid (:mod:`normbench.report.bracket` holds the rule).

``python -m normbench.report.rounds STUDY SWEEPS_DIR [full|smoke|large]`` prints the next round, one
sweep per line (the preset and its overrides, tab-separated) as ``python -m normbench.report.study``
does; an empty output means every cell is bracketed or at a bound.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from normbench.report.bracket import bracket_status, cell_runs, next_round
from normbench.report.load import read_records, runs_frame
from normbench.report.study import StudyError, load_study, sweep_commands
from normbench.report.tables import cell_columns, facet_columns


def _trained_by(preset: str, extra: list[str], overrides: list[str], cell: pd.DataFrame, key: str) -> bool:
    """Whether ``preset`` with ``extra`` and the round's ``overrides`` gives the config of one of the
    ``cell``'s runs, at a value of ``key`` and a seed they trained."""
    from hydra import compose, initialize_config_dir

    from normbench.cli import CONF_DIR
    from normbench.experiment.identity import run_identity

    trained = cell.iloc[0]
    args = [f"experiment={preset}", *extra]
    for override in overrides:
        name = override.partition("=")[0]
        value = trained[key] if name == key else int(trained["seed"]) if name == "seed" else None
        args.append(override if value is None else f"{name}={value}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", args)
    return run_identity(cfg)[1] in set(cell["config_hash"])


def plan(study_path: str | Path, sweeps_dir: str | Path, mode: str = "full") -> list[tuple[str, list[str]]]:
    """The sweeps of the next bracketing round (empty when there is none). Cells are formed over every
    sweep of the study together (a cell's seeds may come from several presets); each extension runs
    with the preset of the cell's first folder, with the mode's overrides other than its grid. Where
    several presets write one folder (the study names it ``folder``), the one whose config, with the
    round's overrides, is that of the cell's runs. The slowest cells come first."""
    study = load_study(study_path)
    if study.bracket is None:
        return []
    presets: dict[str, list[str]] = {}
    for sweep in study.sweeps:
        presets.setdefault(sweep.get("folder", sweep["preset"]), []).append(sweep["preset"])
    mode_extra = {p: e for p, e in sweep_commands(study, mode)}
    folders = [Path(sweeps_dir) / name for name in presets if (Path(sweeps_dir) / name).is_dir()]
    runs = runs_frame(read_records(folders)[0]) if folders else pd.DataFrame()
    if runs.empty or study.bracket.key not in runs:
        return []
    runs["folder"] = runs["path"].map(lambda p: Path(p).parent.name)
    status = bracket_status(runs, study.bracket, study.does_not_train_at, study.degenerate)
    # the columns that make a cell beyond task, norm and batch size: those that vary for one task and
    # norm (a swept option); columns that follow the task or the norm come with it
    fixed = ["task", "norm", "batch_size", *(c for c in facet_columns(runs) if c != study.bracket.key)]
    cells = [c for c in cell_columns(runs) if c != study.bracket.key]
    commands = []
    for row, overrides in zip(
        status[status["state"] == "extend"].to_dict("records"),
        next_round(status, study.bracket, fixed),
        strict=True,
    ):
        cell = cell_runs(runs, {c: row[c] for c in cells})
        first = cell[cell["folder"] == cell["folder"].min()]
        candidates = [p for p in presets[first["folder"].iloc[0]] if p in mode_extra]  # others: left out
        extras = {
            p: [e for e in mode_extra[p] if not e.startswith("hydra.sweeper.params=")] for p in candidates
        }
        if len(candidates) > 1:
            candidates = [
                p for p in candidates if _trained_by(p, extras[p], overrides, first, study.bracket.key)
            ]
            if not candidates:
                raise StudyError(
                    f"no preset writing sweeps/{first['folder'].iloc[0]}/ gives the runs of the cell "
                    f"{' '.join(overrides)}; is the study's 'folder' of each sweep its sweep.name?"
                )
        if candidates:
            cost = cell["wall_time_s"].median() if "wall_time_s" in cell else 0.0
            commands.append(
                (0.0 if pd.isna(cost) else float(cost), candidates[0], [*extras[candidates[0]], *overrides])
            )
    # the slowest cells first (by their runs' wall time so far), so that a slow one never starts last,
    # alone, while the round's other workers idle
    commands.sort(key=lambda c: c[0], reverse=True)
    return [(preset, extra) for _, preset, extra in commands]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) not in (2, 3):
            raise ValueError("usage: python -m normbench.report.rounds STUDY SWEEPS_DIR [full|smoke|large]")
        lines = ["\t".join([preset, *extra]) for preset, extra in plan(*args)]
    except (ValueError, StudyError) as exc:
        print(f"rounds: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if lines:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
