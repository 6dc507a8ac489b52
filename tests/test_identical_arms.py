"""normbench.report.identical: arms whose runs, paired on every other setting, end with the same results."""

from __future__ import annotations

import itertools

import pandas as pd

from normbench.report.identical import RTOL, identical_arms, identical_section


def _runs(results: dict[tuple[str, float | None, int, int, float], tuple[float, float]]) -> pd.DataFrame:
    """Runs of task t from (norm, ghost size, batch size, seed, lr) -> (test_loss, test_error)."""
    return pd.DataFrame(
        [
            {
                "task": "t",
                "norm": norm,
                "batch_size": batch,
                "seed": seed,
                "status": "completed",
                "test_loss": loss,
                "test_error": error,
                "optim.lr": lr,
                "norm.ghost_batch_size": ghost,
                "wall_time_s": float(seed),  # not a result: never compared
            }
            for (norm, ghost, batch, seed, lr), (loss, error) in results.items()
        ]
    )


def _grid() -> dict:
    """batchnorm; ghost_batchnorm at ghost sizes 4 and 16; batch sizes 4 and 16; seeds 0-2; two lrs.
    Ghost size 16 equals BatchNorm at batch 16 to float rounding; everything else differs."""
    results = {}
    for batch, seed, lr in itertools.product((4, 16), range(3), (0.1, 0.2)):
        base = 0.5 + 0.01 * seed + lr + batch / 100
        results["batchnorm", None, batch, seed, lr] = (base, 0.25)
        results["ghost_batchnorm", 4, batch, seed, lr] = (base * 1.1, 0.3)
        same = batch == 16
        results["ghost_batchnorm", 16, batch, seed, lr] = (base * (1 + 1e-6 if same else 1.05), 0.25)
    return results


def test_arms_equal_to_float_rounding_in_every_pair_are_found_with_their_pair_count():
    found = identical_arms(_runs(_grid()))
    assert found.to_dict("records") == [
        {
            "task": "t",
            "arm_a": "batchnorm",
            "arm_b": "ghost_batchnorm (norm.ghost_batch_size=16)",
            "batch_size": 16,
            "pairs": 6,  # 3 seeds x 2 learning rates, each paired with the run of the same seed and lr
        }
    ]


def test_one_pair_that_differs_or_a_difference_above_the_tolerance_keeps_a_cell_out():
    grid = _grid()
    loss = grid["ghost_batchnorm", 16, 16, 2, 0.2][0]
    assert not identical_arms(_runs({**grid, ("ghost_batchnorm", 16, 16, 2, 0.2): (loss, 0.5)})).size
    base = grid["batchnorm", None, 16, 0, 0.1][0]
    above = {**grid, ("ghost_batchnorm", 16, 16, 0, 0.1): (base * (1 + 3 * RTOL), 0.25)}
    assert not identical_arms(_runs(above)).size


def test_runs_are_paired_only_on_equal_settings_and_only_completed_ones():
    """A run of another learning rate is never a pair, however close its results; a diverged run's
    results are not compared."""
    grid = {k: v for k, v in _grid().items() if not (k[0] == "ghost_batchnorm" and k[4] == 0.1)}
    shifted = {(n, g, b, s, 0.1 if n == "ghost_batchnorm" else lr): v for (n, g, b, s, lr), v in grid.items()}
    assert not identical_arms(_runs(shifted)).size  # ghost runs at 0.1 carry the 0.2 results: no pairs
    runs = _runs(_grid())
    runs.loc[runs["norm"] == "ghost_batchnorm", "status"] = "diverged"
    assert not identical_arms(runs).size and identical_section(runs) == ""


def test_the_section_names_each_pair_of_arms_with_its_batch_sizes():
    grid = _grid()
    for seed, lr in itertools.product(range(3), (0.1, 0.2)):  # now identical at batch 4 as well
        grid["ghost_batchnorm", 16, 4, seed, lr] = grid["batchnorm", None, 4, seed, lr]
    text = identical_section(_runs(grid))
    assert text.startswith("## Arms that trained identically\n")
    assert text.splitlines()[-1] == (
        "- t: ghost_batchnorm (norm.ghost_batch_size=16) and batchnorm at batch 4, 16 (12 pairs of runs)."
    )


def test_arms_whose_runs_all_end_alike_whatever_the_seed_are_not_called_identical():
    """Two nets that did not train (every run the uniform prediction: loss ln 10, error 0.9) match pair
    for pair without having computed the same thing; a cell counts only where its runs differ."""
    collapsed = {
        (norm, None, 2, seed, lr): (2.302585, 0.9)
        for norm, seed, lr in itertools.product(("batchnorm", "identity"), range(3), (0.1, 0.2))
    }
    assert not identical_arms(_runs(collapsed)).size
    assert len(identical_arms(_runs({**collapsed, **_grid()}))) == 1  # the grid's own cell still counts
