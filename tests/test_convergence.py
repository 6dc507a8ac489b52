"""Convergence flags from run histories: still falling over the last fifth of training, or not."""

from __future__ import annotations

import pandas as pd

from normbench.report.tables import convergence, still_falling


def _history(values: list[float], key: str = "val_error") -> list[dict]:
    return [{"step": 10 * (i + 1), key: v, "train_loss": 1.0} for i, v in enumerate(values)]


def test_a_plateau_is_not_falling_and_a_late_drop_is():
    assert still_falling(_history([0.5, 0.3, 0.25, 0.21, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])) is False
    # at the 80% mark (step 80) 0.30; afterwards 0.25: a 17% relative drop
    assert still_falling(_history([0.9, 0.7, 0.6, 0.5, 0.4, 0.35, 0.32, 0.30, 0.27, 0.25])) is True
    # no validation split: the training loss decides
    assert still_falling(_history([2.0, 1.0, 0.5, 0.4, 0.3], key="train_loss")[:5]) is False
    assert still_falling(_history([0.2, 0.1])) is None  # too short to tell


def test_a_small_error_drop_within_validation_noise_is_a_plateau():
    # 1.2% -> 1.0%: a 17% relative drop but 0.2 pp, under one sample in a 400-sample validation set
    assert (
        still_falling(_history([0.05, 0.03, 0.02, 0.015, 0.012, 0.012, 0.012, 0.012, 0.011, 0.010])) is False
    )
    # 2.0% -> 1.0%: a whole percentage point is progress
    assert still_falling(_history([0.05, 0.04, 0.03, 0.025, 0.022, 0.021, 0.02, 0.02, 0.015, 0.010])) is True


def test_cells_with_mostly_falling_runs_are_flagged():
    falling = _history([0.9, 0.7, 0.6, 0.5, 0.4, 0.35, 0.32, 0.30, 0.27, 0.25])
    flat = _history([0.5, 0.3, 0.25, 0.21, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])
    rows = [
        {
            "task": "t",
            "norm": norm,
            "batch_size": 32,
            "seed": s,
            "status": "completed",
            "train_error": 0.1,
            "history": h,
        }
        for norm, hs in (("batchnorm", [flat, flat, falling]), ("groupnorm", [falling, falling, flat]))
        for s, h in enumerate(hs)
    ]
    table = convergence(pd.DataFrame(rows)).set_index("norm")
    assert not table.loc["batchnorm", "flagged"] and table.loc["groupnorm", "flagged"]
    assert table.loc["groupnorm", "still_falling"] == 2 / 3
