"""Convergence flags from run histories: a cell still improving over the last fifth of training, by a
rule that one noisy evaluation cannot trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from normbench.report.build import convergence_section
from normbench.report.tables import convergence, late_drop


def _history(values: list[float], key: str = "val_error") -> list[dict]:
    return [{"step": 10 * (i + 1), "train_loss": 1.0, key: v} for i, v in enumerate(values)]


def _ending(before: float, after: float, key: str = "val_error") -> list[dict]:
    """Ten evaluations: 0.9 early, ``before`` at the 80% mark (step 80), ``after`` at the end."""
    return _history([0.9] * 7 + [before, (before + after) / 2, after], key)


def _runs(histories: dict[str, list[list[dict]]]) -> pd.DataFrame:
    """One completed run per history, the histories of each norm's cell seed by seed."""
    return pd.DataFrame(
        [
            {
                "task": "t",
                "norm": norm,
                "batch_size": 32,
                "seed": s,
                "status": "completed",
                "train_error": 0.1,
                "history": h,
            }
            for norm, hs in histories.items()
            for s, h in enumerate(hs)
        ]
    )


def _cells(histories: dict[str, list[list[dict]]]) -> pd.DataFrame:
    return convergence(_runs(histories)).set_index("norm")


def test_the_late_drop_is_taken_from_the_mark_to_the_end_not_to_the_lowest_point():
    # steps 10..100: the last evaluation at or before 80% of 100 is step 80 (0.30); the end is 0.28,
    # although 0.25 came between
    assert late_drop(_history([0.9, 0.7, 0.6, 0.5, 0.4, 0.35, 0.32, 0.30, 0.25, 0.28])) == (0.30, 0.28)
    assert late_drop(_history([2.0, 1.0, 0.5, 0.4, 0.3], key="train_loss")) == (
        0.4,
        0.3,
    )  # mark: step 40 of 50
    assert late_drop(_history([0.2, 0.1])) is None  # too short to tell
    assert late_drop([{"step": s, "fd": 1.0} for s in (1, 2, 3)]) is None  # no error or loss: no verdict


def test_a_cell_whose_runs_all_still_fall_is_flagged_with_the_t_interval_of_its_drops():
    drops = [0.04, 0.05, 0.06]
    table = _cells({"batchnorm": [_ending(0.30, 0.30 - d) for d in drops]})
    row = table.loc["batchnorm"]
    low, high = stats.t.interval(0.95, 2, loc=np.mean(drops), scale=stats.sem(drops))
    assert row["n"] == 3 and row["measure"] == "val_error"
    assert (
        np.isclose(row["drop"], 0.05)
        and np.isclose(row["drop_low"], low)
        and np.isclose(row["drop_high"], high)
    )
    assert row["flagged"]


def test_noise_does_not_flag_a_cell():
    # one run's last evaluation 6 pp lower, the others flat or higher: the interval spans 0
    noisy = [_ending(0.30, 0.24), _ending(0.30, 0.30), _ending(0.30, 0.31)]
    # every run lower by 0.3 pp: consistent, but under half a percentage point
    tiny = [_ending(0.020, 0.017), _ending(0.020, 0.017), _ending(0.021, 0.018)]
    # a single run: no interval, no verdict
    table = _cells({"groupnorm": noisy, "layernorm": tiny, "identity": [_ending(0.30, 0.20)]})
    assert not table["flagged"].any()
    assert table.loc["groupnorm", "drop_low"] < 0 < table.loc["groupnorm", "drop_high"]


def test_without_a_validation_split_the_training_loss_decides_relative_to_its_value():
    falling = [
        _ending(1.0, 0.9, "train_loss"),
        _ending(1.0, 0.88, "train_loss"),
        _ending(1.0, 0.91, "train_loss"),
    ]
    flat = [
        _ending(1.0, 0.995, "train_loss"),
        _ending(1.0, 0.99, "train_loss"),
        _ending(1.0, 0.992, "train_loss"),
    ]
    table = _cells({"batchnorm": falling, "groupnorm": flat})
    assert table.loc["batchnorm", "measure"] == "train_loss"
    assert table.loc["batchnorm", "flagged"] and not table.loc["groupnorm", "flagged"]  # 0.8% < 2% of 1.0


def test_the_report_section_lists_the_flagged_cells_with_their_drop():
    runs = _runs(
        {
            "batchnorm": [_ending(0.30, 0.26), _ending(0.30, 0.25), _ending(0.30, 0.24)],
            "groupnorm": [_ending(0.2, 0.2)] * 3,
        }
    )
    text = convergence_section(runs)
    assert "1 of 2 cells (50%) were still improving" in text
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| t ")
    ]
    low, high = stats.t.interval(0.95, 2, loc=0.05, scale=stats.sem([0.04, 0.05, 0.06]))
    assert rows == [["t", "batchnorm", "32", "10", "3", f"5.00 pp [{low * 100:.2f}, {high * 100:.2f}]"]]
