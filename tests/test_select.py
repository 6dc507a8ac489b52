"""Selection on the validation split (normbench-report --select): chosen on val_error, reported on test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from normbench.report import candidates, load_runs, select_on_validation
from normbench.report.build import build_report

LRS = (0.01, 0.1, 1.0)


def _record(
    norm: str, bs: int, lr: float, seed: int, val: float, test: float, status: str = "completed"
) -> dict:
    config = {
        "task": {"name": "t"},
        "norm": {"name": norm},
        "batch_size": bs,
        "seed": seed,
        "optim": {"lr": lr},
        "data": {"val_size": 0.1, "sampler": "iid"},
        "train": {"budget": "epochs"},
    }
    metrics = {"val_error": val, "test_error": test} if status == "completed" else {}
    return {
        "schema_version": 2,
        "status": status,
        "config_hash": f"{norm}-{bs}-{lr}-{seed}",
        "config": config,
        "metrics": metrics,
        "finished_at": "2026-11-27T00:00:00+00:00",
    }


# val error per (norm, batch size, lr) — the best lr differs by cell; test errors are deliberately
# ordered the other way, so a selection that looked at the test set would pick differently
VAL = {
    ("batchnorm", 2): (0.40, 0.30, 0.50),
    ("batchnorm", 32): (0.30, 0.20, 0.10),
    ("groupnorm", 2): (0.20, 0.25, 0.60),
    ("groupnorm", 32): (0.25, 0.15, 0.35),
}


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweeps"
    for (norm, bs), vals in VAL.items():
        for lr, val in zip(LRS, vals, strict=True):
            for seed in range(3):
                noise = (seed - 1) * 0.01  # seeds vary; means stay as in VAL
                test = 0.9 - val + noise
                record = _record(norm, bs, lr, seed, val + noise, test)
                if (norm, bs, lr, seed) == ("batchnorm", 32, 1.0, 2):
                    record = _record(norm, bs, lr, seed, 0, 0, status="diverged")
                folder = root / record["config_hash"]
                folder.mkdir(parents=True)
                (folder / "result.json").write_text(json.dumps(record))
    return root


def test_each_cell_picks_its_lowest_mean_validation_error(sweep):
    runs = load_runs(sweep)
    table = candidates(runs, ["optim.lr"])
    chosen = table[table["chosen"]].set_index(["norm", "batch_size"])["optim.lr"].to_dict()
    # batchnorm at 32: lr 1.0 has val 0.10 on two seeds but one diverged run counts as 1 -> mean 0.40
    assert chosen == {
        ("batchnorm", 2): 0.1,
        ("batchnorm", 32): 0.1,
        ("groupnorm", 2): 0.01,
        ("groupnorm", 32): 0.1,
    }
    row = table[(table["norm"] == "batchnorm") & (table["batch_size"] == 32) & (table["optim.lr"] == 1.0)]
    assert row["val_mean"].item() == pytest.approx((0.09 + 0.10 + 1.0) / 3) and row["n_diverged"].item() == 1
    picked, _ = select_on_validation(runs, ["optim.lr"])
    assert len(picked) == 12 and set(picked["optim.lr"]) == {"selected"}
    for (norm, bs), lr in chosen.items():
        cell = picked[(picked["norm"] == norm) & (picked["batch_size"] == bs)]
        expected_test = 0.9 - VAL[(norm, bs)][LRS.index(lr)]
        assert cell["test_error"].mean() == pytest.approx(expected_test)


def test_the_api_takes_one_key_as_a_string_and_folders_as_a_list(sweep):
    """As pandas' groupby takes "a" for ["a"]: a string key is one key, not its letters; a list of
    folders is the folders; what is neither is one TypeError naming it."""
    runs = load_runs(sweep)
    pd.testing.assert_frame_equal(load_runs([sweep]), runs)
    pd.testing.assert_frame_equal(load_runs([sweep], sweep), runs)  # a folder twice: each run once
    pd.testing.assert_frame_equal(candidates(runs, "optim.lr"), candidates(runs, ["optim.lr"]))
    picked, _ = select_on_validation(runs, "optim.lr")
    assert set(picked["optim.lr"]) == {"selected"} and len(picked) == 12
    with pytest.raises(TypeError, match=r"^load_runs takes folders or records files \(str or path\), got 3$"):
        load_runs(3)
    with pytest.raises(TypeError, match=r"^load_runs needs at least one folder or records file$"):
        load_runs()
    with pytest.raises(TypeError, match=r"^keys must be one or more config keys as strings .*, got \[\]$"):
        candidates(runs, [])
    with pytest.raises(TypeError, match=r"got \[0\.1\]$"):
        select_on_validation(runs, [0.1])
    with pytest.raises(
        TypeError, match=r"^runs must be a DataFrame \(normbench.report.load_runs\), got list$"
    ):
        select_on_validation([sweep], "optim.lr")


def test_build_report_takes_what_load_runs_takes_and_names_what_it_cannot_use(sweep, tmp_path):
    """A folder as a string was read letter by letter ('sweep folder /'), a key as a string split into
    letters, a reference batch "32" was 'not a batch size of these runs (theirs: ..., 32)', and an --out
    that is a file was errno's 'File exists'."""
    build_report([sweep], tmp_path / "lists", select=["optim.lr"])
    build_report(str(sweep), tmp_path / "strings", select="optim.lr")
    for name in ("summary.csv", "selection.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / "strings" / name), pd.read_csv(tmp_path / "lists" / name)
        )
    taken = tmp_path / "taken"
    taken.write_text("a user's file\n")
    with pytest.raises(NotADirectoryError, match=rf"^{taken}: is a file; the report needs a folder$"):
        build_report(sweep, taken)
    assert taken.read_text() == "a user's file\n"
    with pytest.raises(
        TypeError, match=r"^reference_batch must be a batch size \(an integer\) or None, got '32'$"
    ):
        build_report(sweep, tmp_path / "typed", reference_batch="32")
    with pytest.raises(
        TypeError, match=r"^build_report takes folders or records files \(str or path\), got None$"
    ):
        build_report(None, tmp_path / "none")
    # notes as a list failed after every figure was drawn; html="no" wrote an HTML report
    with pytest.raises(TypeError, match=r"^build_report: notes must be text \(markdown\), got list$"):
        build_report(sweep, tmp_path / "notes", notes=["a finding"])
    with pytest.raises(TypeError, match=r"^build_report: html must be True or False, got 'no'$"):
        build_report(sweep, tmp_path / "html", html="no")
    assert not any((tmp_path / name).exists() for name in ("typed", "none", "notes", "html"))


def test_the_seed_is_not_a_setting_to_choose_on_validation(sweep):
    with pytest.raises(
        ValueError, match=r"^selection key seed: the seeds are the repeats of each cell; .*no interval$"
    ):
        candidates(load_runs(sweep), ["optim.lr", "seed"])


def test_report_tabulates_the_test_error_of_the_choice(sweep, tmp_path):
    report = build_report([sweep], tmp_path / "out", select=["optim.lr"]).read_text()
    assert "## Selected on the validation split" in report and "The test set chose nothing" in report
    selection = pd.read_csv(tmp_path / "out" / "selection.csv")
    assert selection["chosen"].sum() == 4 and len(selection) == 12
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    bn32 = summary[(summary["norm"] == "batchnorm") & (summary["batch_size"] == 32)]
    assert len(bn32) == 1 and bn32["mean"].item() == pytest.approx(0.9 - 0.20)
    assert sorted(p.suffix for p in (tmp_path / "out" / "figures").glob("selection_*")) == [".svg"]


def test_without_a_validation_metric_nothing_is_selected_and_nothing_written(sweep, tmp_path):
    for path in sweep.rglob("result.json"):
        record = json.loads(path.read_text())
        record["metrics"].pop("val_error", None)
        path.write_text(json.dumps(record))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from normbench.report.cli import main; main()",
            str(sweep),
            "--out",
            str(tmp_path / "out"),
            "--select",
            "optim.lr",
        ],
        capture_output=True,
        text=True,
    )
    assert (
        proc.returncode == 2
        and "have no val_error" in proc.stderr
        and "the test set chooses nothing" in proc.stderr
    )
    assert not (tmp_path / "out").exists()


def test_unknown_key_names_what_was_swept(sweep, tmp_path):
    with pytest.raises(
        ValueError, match=r"^selection key optim.lrr: not a config key of these runs \(swept here: .*optim.lr"
    ):
        build_report([sweep], tmp_path / "out", select=["optim.lrr"])


@pytest.mark.parametrize("axis", ["batch_size", "norm", "task"])
def test_the_reports_axes_are_not_settings_to_choose_and_nothing_is_written(sweep, tmp_path, axis):
    """``--select batch_size`` was a KeyError after the selection table was drawn; ``--select norm``
    tabulated each norm as its own 'selected' row, split by the norm's own options."""
    with pytest.raises(
        ValueError, match=rf"^selection key {axis}: task, norm, batch_size are what the report"
    ):
        build_report([sweep], tmp_path / "out", select=["optim.lr", axis])
    assert not (tmp_path / "out").exists()


def test_a_key_given_twice_is_named(sweep, tmp_path):
    with pytest.raises(ValueError, match=r"^selection key optim.lr: given more than once$"):
        build_report([sweep], tmp_path / "out", select=["optim.lr", "optim.lr"])  # was pandas' insert error
    assert not (tmp_path / "out").exists()
