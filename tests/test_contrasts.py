"""Paired contrasts: per-seed values, t intervals against the textbook formula, Holm's adjustment."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from normbench.report.contrasts import Contrast, evaluate, evaluate_all, holm, per_seed, sentence

BN2, BN32 = {"norm": "batchnorm", "batch_size": 2}, {"norm": "batchnorm", "batch_size": 32}
GN2, GN32 = {"norm": "groupnorm", "batch_size": 2}, {"norm": "groupnorm", "batch_size": 32}


def _runs(values: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    rows = [
        {"norm": norm, "batch_size": bs, "seed": seed, "status": "completed", "test_error": v}
        for (norm, bs), per_seed_values in values.items()
        for seed, v in enumerate(per_seed_values)
    ]
    return pd.DataFrame(rows)


VALUES = {
    ("batchnorm", 2): [0.60, 0.55, 0.62, 0.58, 0.61],
    ("batchnorm", 32): [0.20, 0.22, 0.19, 0.21, 0.20],
    ("groupnorm", 2): [0.25, 0.27, 0.24, 0.26, 0.25],
    ("groupnorm", 32): [0.22, 0.23, 0.21, 0.24, 0.22],
}
INTERACTION = Contrast("BN's loss from 32 to 2 minus GN's", ((BN2, 1), (BN32, -1), (GN2, -1), (GN32, 1)))


def test_interaction_is_computed_seed_by_seed_with_the_textbook_t_interval():
    runs = _runs(VALUES)
    expected = np.array(
        [
            (VALUES["batchnorm", 2][s] - VALUES["batchnorm", 32][s])
            - (VALUES["groupnorm", 2][s] - VALUES["groupnorm", 32][s])
            for s in range(5)
        ]
    )
    np.testing.assert_allclose(per_seed(runs, INTERACTION, "test_error").to_numpy(), expected)
    result = evaluate(runs, INTERACTION, "test_error")
    half = student_t.ppf(0.975, 4) * expected.std(ddof=1) / math.sqrt(5)
    assert result.n == 5 and result.mean == pytest.approx(expected.mean())
    assert (result.low, result.high) == pytest.approx((expected.mean() - half, expected.mean() + half))
    assert result.established


def test_only_seeds_in_every_cell_are_paired():
    values = dict(VALUES)
    values["groupnorm", 2] = VALUES["groupnorm", 2][:3]  # seeds 3 and 4 missing in one cell
    runs = _runs(values)
    runs.loc[(runs["norm"] == "batchnorm") & (runs["batch_size"] == 2) & (runs["seed"] == 0), "status"] = (
        "diverged"
    )
    assert per_seed(runs, INTERACTION, "test_error").index.tolist() == [1, 2]


def test_a_noisy_difference_is_not_established():
    runs = _runs({("batchnorm", 32): [0.20, 0.30, 0.10], ("groupnorm", 32): [0.25, 0.15, 0.21]})
    result = evaluate_all(runs, [Contrast("BN - GN at 32", ((BN32, 1), (GN32, -1)))], "test_error")[0]
    assert result.low < 0 < result.high and not result.established
    assert sentence(result).endswith("not established (the interval includes 0).")
    assert sentence(result).startswith("BN - GN at 32: -0.3 pp, 95% CI [")


def test_several_runs_per_seed_in_a_cell_are_refused_naming_the_runs_and_how_they_differ():
    runs = _runs(VALUES).assign(**{"data.test_samples": 4000, "path": "sweeps/new"})
    old = _runs({("batchnorm", 2): [0.5]}).assign(**{"data.test_samples": 1000, "path": "sweeps/old"})
    with pytest.raises(ValueError) as refusal:
        per_seed(pd.concat([runs, old]), INTERACTION, "test_error")
    assert str(refusal.value) == (
        "contrast \"BN's loss from 32 to 2 minus GN's\": cell {'norm': 'batchnorm', 'batch_size': 2} has "
        "several runs per seed (seed 0: 2 runs (sweeps/new, sweeps/old), which differ in "
        "data.test_samples: 4000, 1000); select on more columns, or move runs of an earlier protocol out "
        "of the folders"
    )


def test_holm_matches_the_hand_computed_adjustment():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.2, float("nan"), 0.9])
    assert adjusted[0] == pytest.approx(0.4) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.9)


def test_an_interval_that_excludes_zero_is_not_enough_after_holm():
    values = {("batchnorm", 2): [0.30, 0.31, 0.36], ("batchnorm", 32): [0.20, 0.21, 0.22]}
    runs = _runs(values)
    bn = Contrast("BN(2) − BN(32)", ((BN2, 1), (BN32, -1)))
    alone = evaluate(runs, bn, "test_error")
    assert alone.low > 0 and alone.established  # by itself the interval decides
    # made together with many claims, the Holm-adjusted p rises past 0.05
    together = evaluate_all(runs, [bn] * 40, "test_error")[0]
    assert together.p_holm == pytest.approx(min(1.0, 40 * alone.p)) and together.p_holm >= 0.05
    assert not together.established
    assert sentence(together).endswith(
        "not established after the Holm adjustment over its family (adjusted p >= 0.05)."
    )


def test_tost_is_the_larger_of_two_one_sided_t_tests_against_the_margin():
    gn = [0.250, 0.262, 0.241, 0.255, 0.248]
    bn = [0.252, 0.259, 0.246, 0.251, 0.250]
    runs = _runs({("groupnorm", 32): gn, ("batchnorm", 32): bn})
    contrast = Contrast("GN - BN at 32", ((GN32, 1), (BN32, -1)))
    result = evaluate(runs, contrast, "test_error", margin=0.01, equivalence=True)
    d = np.subtract(gn, bn)
    se = d.std(ddof=1) / math.sqrt(len(d))
    p_low = student_t.sf((d.mean() + 0.01) / se, len(d) - 1)  # H0: mean <= -margin
    p_high = student_t.cdf((d.mean() - 0.01) / se, len(d) - 1)  # H0: mean >= +margin
    assert result.p_tost == pytest.approx(max(p_low, p_high))
    assert result.p_tost < 0.05 and result.equivalent and result.established
    # alone, outside a primary family's Holm adjustment, it is labelled exploratory
    assert "equivalent within ±1 pp (exploratory, unadjusted)" in sentence(result)
    primary = dataclasses.replace(result, family="primary", p_holm=result.p_tost)
    assert "equivalent within ±1 pp (established)" in sentence(primary)
    tight = evaluate(runs, contrast, "test_error", margin=0.001, equivalence=True)
    assert not tight.established and "equivalence within ±0.1 pp not established" in sentence(tight)


def test_a_non_significant_difference_is_called_small_only_by_its_tost():
    runs = _runs({("batchnorm", 32): [0.20, 0.30, 0.10], ("groupnorm", 32): [0.25, 0.15, 0.21]})
    result = evaluate(runs, Contrast("BN - GN", ((BN32, 1), (GN32, -1))), "test_error", margin=0.01)
    text = sentence(result)
    assert "not established (the interval includes 0); within ±1 pp: not shown either (TOST p = " in text
    assert "absent" not in text and "no difference" not in text


@pytest.mark.parametrize(
    "values, reason",
    [
        ({("batchnorm", 2): [0.60, 0.62], ("batchnorm", 32): [0.20, 0.21]}, "fewer than 3 paired seeds"),
        (
            {("batchnorm", 2): [0.60, 0.61, 0.62], ("batchnorm", 32): [0.20, 0.21, 0.22]},
            "an interval of zero width",
        ),
    ],
)
def test_two_seeds_or_a_zero_width_interval_establish_nothing(values, reason):
    result = evaluate(_runs(values), Contrast("BN(2) - BN(32)", ((BN2, 1), (BN32, -1))), "test_error")
    assert result.excludes_zero and not result.established
    assert sentence(result).endswith(f"not established ({reason}).")
