"""Bracketed learning rates: which cells are extended, to which value, and the sweeps that do it."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from normbench.report.bracket import Bracket, bracket_status, next_round
from normbench.report.rounds import main, plan
from normbench.report.select import leave_one_seed_out

BRACKET = Bracket("optim.lr", 2.0, 0.01, 0.4)


def _runs(val: dict[tuple[str, int, float], list[float]]) -> pd.DataFrame:
    """Runs of task 'toy' with the given validation errors per (norm, batch size, lr) and seed."""
    rows = [
        {
            "task": "toy",
            "norm": norm,
            "batch_size": bs,
            "optim.lr": lr,
            "seed": seed,
            "status": "completed",
            "val_error": v,
            "test_error": v,
        }
        for (norm, bs, lr), values in val.items()
        for seed, v in enumerate(values)
    ]
    return pd.DataFrame(rows)


VAL = {
    ("batchnorm", 2, 0.025): [0.30, 0.31, 0.29],  # low edge wins: extend to 0.0125
    ("batchnorm", 2, 0.05): [0.35, 0.36, 0.34],
    ("batchnorm", 32, 0.1): [0.30, 0.30, 0.31],  # interior
    ("batchnorm", 32, 0.2): [0.20, 0.21, 0.22],
    ("batchnorm", 32, 0.4): [0.25, 0.25, 0.26],
    ("groupnorm", 2, 0.2): [0.40, 0.41, 0.40],
    ("groupnorm", 2, 0.4): [0.30, 0.31, 0.30],  # high edge at the bound 0.4: stays
    ("identity", 2, 0.1): [0.89, 0.90, 0.90],  # has not trained yet, best at the low edge
    ("identity", 2, 0.2): [0.90, 0.91, 0.90],
}


def test_each_cell_is_extended_beyond_its_edge_until_a_bound():
    status = bracket_status(_runs(VAL), BRACKET, does_not_train_at=0.85).set_index(["norm", "batch_size"])
    assert status.loc[("batchnorm", 2), "state"] == "extend"
    assert status.loc[("batchnorm", 2), "next"] == 0.0125
    assert status.loc[("batchnorm", 32), "state"] == "interior"
    assert status.loc[("groupnorm", 2), "state"] == "at a bound"  # 0.8 would pass the bound 0.4
    assert status["next"].notna().sum() == 2
    assert status["trains"].tolist() == [True, True, True, False]


def test_a_cell_that_did_not_train_is_extended_like_any_other_and_flagged():
    status = bracket_status(_runs(VAL), BRACKET, does_not_train_at=0.85).set_index(["norm", "batch_size"])
    assert status.loc[("identity", 2), ["state", "next", "trains"]].tolist() == ["extend", 0.05, False]
    # without the study's threshold every cell counts as trained, and so does a cell without a
    # validation error (a GAN's)
    assert bracket_status(_runs(VAL), BRACKET)["trains"].all()
    nan = float("nan")
    runs = _runs({**VAL, ("gan", 32, 0.0002): [nan, nan, nan]})
    status = bracket_status(runs, BRACKET, does_not_train_at=0.85).set_index(["norm", "batch_size"])
    assert status.loc[("gan", 32), "trains"] and not status.loc[("identity", 2), "trains"]


def test_a_degenerate_cell_is_not_extended():
    entries = [{"where": {"norm": "batchnorm", "batch_size": 2}, "reason": "sign collapse."}]
    status = bracket_status(_runs(VAL), BRACKET, degenerate=entries).set_index(["norm", "batch_size"])
    assert status.loc[("batchnorm", 2), "state"] == "degenerate"


def test_a_later_key_at_its_old_value_is_left_to_the_default():
    runs = _runs(VAL).assign(**{"norm.positions": 0})
    runs.loc[runs["norm"] == "groupnorm", "norm.positions"] = 0  # filled in for a plugin without the option
    status = bracket_status(runs, BRACKET)
    assert next_round(status, BRACKET, ["task", "norm", "batch_size", "norm.positions"])[0][:3] == [
        "task=toy",
        "norm=batchnorm",
        "batch_size=2",
    ]


def test_the_next_round_reruns_the_cell_with_its_seeds_at_the_new_value():
    status = bracket_status(_runs(VAL), BRACKET, does_not_train_at=0.85)
    assert next_round(status, BRACKET, ["task", "norm", "batch_size"]) == [
        ["task=toy", "norm=batchnorm", "batch_size=2", "optim.lr=0.0125", "seed=0,1,2"],
        ["task=toy", "norm=identity", "batch_size=2", "optim.lr=0.05", "seed=0,1,2"],
    ]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"key": "optim.lr", "factor": 1, "bounds": [0.1, 1]}, "needs key and a factor > 1"),
        ({"key": "optim.lr", "factor": 2, "bounds": [1, 0.1]}, "bounds=[1, 0.1]: must be [low, high]"),
        ({"key": "optim.lr", "factor": 2, "bounds": [0.1, 1], "step": 3}, "unknown key 'step'"),
    ],
)
def test_bad_brackets_are_refused_with_the_entry(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Bracket.from_spec(spec, "study.yaml: bracket")


def test_leave_one_seed_out_flags_a_choice_one_seed_decides():
    val = {
        ("batchnorm", 32, 0.1): [0.20, 0.20, 0.30],
        ("batchnorm", 32, 0.2): [0.22, 0.22, 0.20],  # mean 0.2133 vs 0.2333: 0.2 wins only with seed 2
    }
    check = leave_one_seed_out(_runs(val), ["optim.lr"])
    assert check["changed"].tolist() == [1] and not check["stable"].iloc[0]
    assert leave_one_seed_out(_runs(VAL), ["optim.lr"])["stable"].all()


STUDY = """
title: Bracketed
select: [optim.lr]
does_not_train_at: 0.85
bracket: {key: optim.lr, factor: 2, bounds: [0.01, 0.4]}
sweeps:
  - preset: toy_preset
    folder: toy
    smoke: {norm: batchnorm}
smoke: [train.epochs=1]
sections: []
"""


def _write(folder, runs: pd.DataFrame) -> None:
    for i, row in enumerate(runs.to_dict("records")):
        record = {
            "schema_version": 2,
            "status": "completed",
            "config_hash": f"{i:016x}",
            "config": {
                "task": {"name": row["task"]},
                "norm": {"name": row["norm"]},
                "batch_size": row["batch_size"],
                "seed": row["seed"],
                "optim": {"lr": row["optim.lr"]},
            },
            "metrics": {"val_error": row["val_error"], "test_error": row["test_error"]},
            "history": [],
        }
        if "wall_time_s" in row:
            record["wall_time_s"] = row["wall_time_s"]
        (folder / record["config_hash"]).mkdir(parents=True)
        (folder / record["config_hash"] / "result.json").write_text(json.dumps(record))


def test_the_plan_names_the_preset_and_keeps_the_modes_other_overrides(tmp_path, capsys):
    _write(tmp_path / "sweeps" / "toy", _runs(VAL))
    (tmp_path / "study.yaml").write_text(STUDY)
    sweeps = plan(tmp_path / "study.yaml", tmp_path / "sweeps", "smoke")
    assert sweeps == [
        (
            "toy_preset",
            ["train.epochs=1", "task=toy", "norm=batchnorm", "batch_size=2", "optim.lr=0.0125", "seed=0,1,2"],
        ),
        (
            "toy_preset",
            ["train.epochs=1", "task=toy", "norm=identity", "batch_size=2", "optim.lr=0.05", "seed=0,1,2"],
        ),
    ]
    main([str(tmp_path / "study.yaml"), str(tmp_path / "sweeps")])
    assert capsys.readouterr().out == "".join(
        "\t".join(["toy_preset", *extra[1:]]) + "\n" for _, extra in sweeps
    )
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "study.yaml")])
    assert exc.value.code == 2 and "usage: python -m normbench.report.rounds" in capsys.readouterr().err


@pytest.mark.parametrize("slow", ["batchnorm", "groupnorm"])
def test_a_round_starts_its_slowest_cells_first(tmp_path, slow):
    # both cells' best lr is their grid's low edge; the one whose runs took longer is extended first
    val = {
        ("batchnorm", 2, 0.025): [0.30, 0.31, 0.29],
        ("batchnorm", 2, 0.05): [0.35, 0.36, 0.34],
        ("groupnorm", 2, 0.1): [0.30, 0.31, 0.29],
        ("groupnorm", 2, 0.2): [0.35, 0.36, 0.34],
    }
    runs = _runs(val)
    runs["wall_time_s"] = runs["norm"].map(lambda norm: 50.0 if norm == slow else 5.0)
    _write(tmp_path / "sweeps" / "toy", runs)
    (tmp_path / "study.yaml").write_text(STUDY)
    norms = [
        dict(o.split("=") for o in extra)["norm"]
        for _, extra in plan(tmp_path / "study.yaml", tmp_path / "sweeps")
    ]
    assert norms == [slow, *({"batchnorm", "groupnorm"} - {slow})]


SHARED = """
title: Two presets, one folder
select: [optim.lr]
does_not_train_at: 0.85
bracket: {key: optim.lr, factor: 2, bounds: [0.01, 0.4]}
sweeps:
  - preset: rnn_mnist1d
    folder: rnn_curve
  - preset: rnn_curve
sections: []
"""


def test_a_cell_extends_with_the_preset_that_trained_it_where_presets_share_a_folder(tmp_path):
    # rnn_mnist1d writes rnn_curve's folder with settings of its own (seq_lstm, 20 epochs, no 0.2
    # validation split): its cell at the low edge extends with rnn_mnist1d, not the folder's first preset
    from helpers import compose_cfg

    from normbench.experiment.identity import run_identity

    folder = tmp_path / "sweeps" / "rnn_curve"
    for lr, val in ((0.1, 0.2), (0.2, 0.3), (0.4, 0.9)):
        for seed in range(2):
            overrides = (
                "experiment=rnn_mnist1d",
                "norm=identity",
                "batch_size=32",
                f"optim.lr={lr}",
                f"seed={seed}",
            )
            digest = run_identity(compose_cfg(*overrides))[1]
            record = {
                "schema_version": 2,
                "status": "completed",
                "config_hash": digest,
                "config": {
                    "task": {"name": "seq_lstm"},
                    "norm": {"name": "identity"},
                    "batch_size": 32,
                    "seed": seed,
                    "optim": {"lr": lr},
                },
                "metrics": {"val_error": val + seed / 100, "test_error": val},
                "history": [],
            }
            (folder / digest).mkdir(parents=True)
            (folder / digest / "result.json").write_text(json.dumps(record))
    (tmp_path / "study.yaml").write_text(SHARED)
    assert plan(tmp_path / "study.yaml", tmp_path / "sweeps") == [
        ("rnn_mnist1d", ["task=seq_lstm", "norm=identity", "batch_size=32", "optim.lr=0.05", "seed=0,1"])
    ]


def test_the_report_counts_each_state_and_lists_the_cells_that_did_not_train(tmp_path):
    from normbench.report.study import load_study, selection_check

    (tmp_path / "study.yaml").write_text(STUDY)
    text = selection_check(_runs(VAL), load_study(tmp_path / "study.yaml"))
    assert (
        "Of 4 cells: interior choice 1, at a bound 1, awaiting another round 2, degenerate (not extended) 0. "
        "Of the others, 1 did not train at any value tried (best mean validation error at or above 85%)"
    ) in text
    listed = text.split("not trained at any value tried:")[1].split("Leave-one-seed-out")[0]
    rows = [line.replace(" ", "") for line in listed.splitlines() if line.startswith("|")][2:]
    assert [row.split("|")[2] for row in rows] == ["batchnorm", "groupnorm", "identity"]
    assert rows[-1].endswith("|extend|False|")
