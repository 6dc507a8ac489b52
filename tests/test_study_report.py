"""A study description turned into report sections, on hand-made records with known numbers."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t
from scipy.stats import ttest_1samp

from normbench.report.build import build_report
from normbench.report.cli import main as report_main
from normbench.report.contrasts import holm, mean_interval
from normbench.report.study import (
    StudyError,
    Unit,
    _selection_lines,
    cell_table,
    expand,
    first_epoch_at_most,
    load_study,
)

ROOT = Path(__file__).resolve().parents[1]

# test error per (norm, batch size) and seed, at the lr the validation split chooses (0.05)
ERRORS = {
    ("batchnorm", 2): [0.50, 0.52, 0.57],
    ("batchnorm", 32): [0.20, 0.21, 0.22],
    ("groupnorm", 2): [0.24, 0.25, 0.27],
    ("groupnorm", 32): [0.24, 0.23, 0.24],
}
STUDY = """
title: Toy study
select: [optim.lr]
metric: test_error
diverged_as: 1.0
derived:
  epochs_to_target: {history: val_error, at_most: {toy: 0.315}}
sections:
  - title: Batch
    question: Does BN lose more than GN?
    table: {rows: norm, columns: batch_size}
    claims:
      - name: "(BN(2) − BN(32)) − (GN(2) − GN(32))"
        plus: [{norm: batchnorm, batch_size: 2}, {norm: groupnorm, batch_size: 32}]
        minus: [{norm: batchnorm, batch_size: 32}, {norm: groupnorm, batch_size: 2}]
      - name: "{norm}(2) − {norm}(32)"
        for_each: {norm: [batchnorm, groupnorm, layernorm], small: [2]}
        where: {norm: "{norm}"}
        plus: [{batch_size: "{small}"}]
        minus: [{batch_size: 32}]
  - title: Statistics
    question: EMA against PreciseBN.
    where: {norm: batchnorm}
    table: {rows: batch_size, metrics: [test_error, test_error_precise_bn]}
    claims:
      - name: "batch {b}: EMA − PreciseBN"
        for_each: {b: [2, 32]}
        where: {batch_size: "{b}"}
        plus: [{metric: test_error}]
        minus: [{metric: test_error_precise_bn}]
  - title: Learning rates
    question: At the largest lr.
    selected: false
    where: {batch_size: 32}
    candidates: {rows: norm, columns: optim.lr}
    claims:
      - name: "groupnorm − batchnorm at lr 0.4"
        where: {optim.lr: 0.4}
        plus: [{norm: groupnorm}]
        minus: [{norm: batchnorm}]
  - title: Speed
    question: Epochs to target.
    where: {batch_size: 32}
    metric: epochs_to_target
    unit: {scale: 1, name: epochs}
    claims:
      - name: "groupnorm − batchnorm"
        plus: [{norm: groupnorm}]
        minus: [{norm: batchnorm}]
"""


def record(i: int, norm: str, bs: int, seed: int, err: float, lr: float, status: str = "completed") -> dict:
    val = err if lr == 0.05 else err + 0.1  # lr 0.05 wins on validation everywhere
    metrics = {
        "test_error": err,
        "test_loss": 1.0,
        "train_error": err / 2,
        "train_loss": 0.5,
        "val_error": val,
    }
    if norm == "batchnorm":
        metrics["test_error_precise_bn"] = err - 0.05
    history = [
        {
            "step": 10 * e,
            "epoch": float(e),
            "train_loss": 1.0,
            "test_error": err,
            "val_error": val + 0.1 * (3 - e),
        }
        for e in (1, 2, 3)
    ]
    if status == "diverged":
        metrics, history = {}, history[:1]
    return {
        "schema_version": 2,
        "status": status,
        "config_hash": f"{i:016x}",
        "config": {
            "task": {"name": "toy"},
            "norm": {"name": norm},
            "batch_size": bs,
            "seed": seed,
            "optim": {"lr": lr},
            "train": {"budget": "epochs", "epochs": 3},
            "data": {"sampler": "iid", "val_size": 0.1},
        },
        "metrics": metrics,
        "history": history,
        "finished_at": "2026-01-01T00:00:00",
    }


@pytest.fixture
def study_dir(tmp_path) -> Path:
    records = []
    for (norm, bs), errs in ERRORS.items():
        for seed, err in enumerate(errs):
            for lr in (0.05, 0.4):
                status = "diverged" if (norm, bs, lr, seed) == ("groupnorm", 32, 0.4, 0) else "completed"
                records.append(record(len(records), norm, bs, seed, err, lr, status))
    for r in records:
        folder = tmp_path / "sweeps" / r["config_hash"]
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(r))
    (tmp_path / "study.yaml").write_text(STUDY)
    return tmp_path


def _per_seed(fn) -> np.ndarray:
    return np.array([fn(s) for s in range(3)])


def _interval(values: np.ndarray) -> tuple[float, float, float]:
    half = student_t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return values.mean(), values.mean() - half, values.mean() + half


def _line(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"- {name}:"))


def test_claims_are_paired_contrasts_with_textbook_intervals(study_dir):
    text = build_report([study_dir / "sweeps"], study_dir / "out", study=study_dir / "study.yaml").read_text()
    e = {k: np.array(v) for k, v in ERRORS.items()}
    interaction = (e["batchnorm", 2] - e["batchnorm", 32]) - (e["groupnorm", 2] - e["groupnorm", 32])
    mean, low, high = _interval(interaction)
    line = _line(text, "(BN(2) − BN(32)) − (GN(2) − GN(32))")
    assert f"{mean * 100:+.1f} pp, 95% CI [{low * 100:+.1f}, {high * 100:+.1f}] over 3 paired seeds" in line
    assert line.endswith(": established.")
    gn = _interval(e["groupnorm", 2] - e["groupnorm", 32])
    gn_line = _line(text, "groupnorm(2) − groupnorm(32)")
    assert f"{gn[0] * 100:+.1f} pp, 95% CI [{gn[1] * 100:+.1f}, {gn[2] * 100:+.1f}]" in gn_line
    assert gn_line.endswith("not established (the interval includes 0).")
    assert "layernorm(2)" not in text  # no layernorm runs: the claim is left out, not reported empty


def _epochs_to(threshold: float, err: float) -> float:
    """Independent of the code: the first of epochs 1-3 whose validation error (err + 0.1 (3 - e) in
    these records) is at most the threshold, else 4."""
    return next((float(e) for e in (1, 2, 3) if err + 0.1 * (3 - e) <= threshold), 4.0)


def test_holm_is_over_every_claim_of_the_report(study_dir):
    text = build_report([study_dir / "sweeps"], study_dir / "out", study=study_dir / "study.yaml").read_text()
    body = text.split("## Batch", 1)[1]
    shown = [float(line.rsplit("p = ", 1)[1].split(":")[0]) for line in body.splitlines() if " p = " in line]
    e = {k: np.array(v) for k, v in ERRORS.items()}
    contrasts = [
        (e["batchnorm", 2] - e["batchnorm", 32]) - (e["groupnorm", 2] - e["groupnorm", 32]),
        e["batchnorm", 2] - e["batchnorm", 32],
        e["groupnorm", 2] - e["groupnorm", 32],
        np.array([1.0, 0.23, 0.24]) - e["batchnorm", 32],  # lr 0.4; GN's seed 0 diverged: counts as 1
        np.array([_epochs_to(0.315, x) for x in ERRORS["groupnorm", 32]])
        - np.array([_epochs_to(0.315, x) for x in ERRORS["batchnorm", 32]]),
    ]
    raw = [ttest_1samp(v, 0).pvalue for v in contrasts]
    raw[3:3] = [0.0, 0.0]  # EMA − PreciseBN: exactly +5 pp on every seed (no spread): p = 0
    assert len(shown) == 7
    np.testing.assert_allclose(shown, holm(raw), rtol=2e-3)


def test_metric_per_cell_and_diverged_runs_in_unselected_sections(study_dir):
    text = build_report([study_dir / "sweeps"], study_dir / "out", study=study_dir / "study.yaml").read_text()
    assert "batch 2: EMA − PreciseBN: +5.0 pp, 95% CI [+5.0, +5.0] over 3 paired seeds" in text
    # lr 0.4 (chosen nowhere; test errors as at 0.05), GN's seed 0 diverged -> counts as 1
    gn = np.array([1.0, 0.23, 0.24]) - np.array([0.20, 0.21, 0.22])
    mean, low, high = _interval(gn)
    line = _line(text, "groupnorm − batchnorm at lr 0.4")
    assert f"{mean * 100:+.1f} pp, 95% CI [{low * 100:+.1f}, {high * 100:+.1f}]" in line
    candidates = text.split("## Learning rates", 1)[1].split("\n## ", 1)[0]
    assert "21.0*" in candidates and "(1 div.)" in candidates  # BN's mean at 0.05, chosen; GN's diverged run


def test_tables_show_mean_and_t_interval(study_dir):
    text = build_report([study_dir / "sweeps"], study_dir / "out", study=study_dir / "study.yaml").read_text()
    mean, low, high = mean_interval(ERRORS["batchnorm", 2])
    _, low_ref, high_ref = _interval(np.array(ERRORS["batchnorm", 2]))
    assert (low, high) == pytest.approx((low_ref, high_ref))
    batch = text.split("## Batch", 1)[1].split("\n## ", 1)[0]
    assert f"{mean * 100:.1f} [{low * 100:.1f}, {high * 100:.1f}]" in batch
    stats = text.split("## Statistics", 1)[1].split("\n## ", 1)[0]
    mean, low, high = _interval(np.array(ERRORS["batchnorm", 32]) - 0.05)  # PreciseBN at batch 32
    assert (
        "test_error_precise_bn" in stats and f"{mean * 100:.1f} [{low * 100:.1f}, {high * 100:.1f}]" in stats
    )
    assert (study_dir / "out" / "figures" / "claims_Batch.svg").stat().st_size > 0


def test_epochs_to_target_from_history():
    history = [
        {"epoch": 1.0, "val_error": 0.5},
        {"epoch": 2.0, "val_error": 0.29},
        {"epoch": 3.0, "val_error": 0.2},
    ]
    assert first_epoch_at_most(history, "val_error", 0.3, budget=3) == 2.0
    assert first_epoch_at_most(history, "val_error", 0.1, budget=3) == 4.0  # never: one past the budget


def test_speed_section_uses_the_derived_metric(study_dir):
    text = build_report([study_dir / "sweeps"], study_dir / "out", study=study_dir / "study.yaml").read_text()
    diff = np.array(
        [
            _epochs_to(0.315, g) - _epochs_to(0.315, b)
            for g, b in zip(ERRORS["groupnorm", 32], ERRORS["batchnorm", 32], strict=True)
        ]
    )
    mean, low, high = _interval(diff)
    line = _line(text, "groupnorm − batchnorm")
    assert f"{mean:+.1f} epochs, 95% CI [{low:+.1f}, {high:+.1f}] over 3 paired seeds" in line


def test_protocol_is_read_from_the_records(study_dir):
    text = build_report([study_dir / "sweeps"], study_dir / "out", study=study_dir / "study.yaml").read_text()
    assert "- **toy**: 24 runs; batch 2: 3 epochs" in text
    assert (
        "- **toy**: `optim.lr` chosen per cell on 10% of the training set held out for validation (`data.val_size`, stratified), from: 0.05, 0.4."
        in text
    )
    assert "# Toy study" in text and "24 runs (23 completed, 1 diverged, 0 failed)" in text


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            "sections:\n  - title: x\n    claims:\n      - {name: a, plus: [{}], colour: red}\n",
            "unknown key 'colour'",
        ),
        ("sections:\n  - {title: x, tables: {}}\n", "unknown key 'tables'"),
        ("sections:\n  - title: x\n    claims:\n      - {name: a}\n", "needs a name and plus and/or minus"),
        ("titel: x\n", "unknown key 'titel'"),
        # another file given as --study: its type or the YAML error's place, never its content
        (
            "secret line one\nsecret line two\n",
            r"study description .*study.yaml: expected a mapping, got str$",
        ),
        ("[1, 2\nsecret: : x\n", r"study description .*study.yaml: not YAML \(line 2, column 7\): .*$"),
    ],
)
def test_a_bad_description_is_refused_before_anything_is_written(tmp_path, capsys, bad, message):
    (tmp_path / "study.yaml").write_text(bad)
    with pytest.raises(StudyError, match=message):
        load_study(tmp_path / "study.yaml")
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path), "--out", str(tmp_path / "out"), "--study", str(tmp_path / "study.yaml")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err.strip()) and len(err.strip().splitlines()) == 1
    assert "secret" not in err
    assert not (tmp_path / "out").exists()


def test_the_cifar_study_expands_to_its_claims():
    study = load_study(ROOT / "conf/study/cifar.yaml")
    names = [c.contrast.name for s in study.sections for c in expand(s, study)]
    assert study.reference_batch == 128 and study.select == ["optim.lr"]
    assert "(BN(2) − BN(128)) − (GN(2) − GN(128))" in names and len(names) == 3 + 3 + 4


def test_the_committed_study_expands_to_its_claims():
    study = load_study(ROOT / "conf/study/small_batch_v1.yaml")
    claims = [c for s in study.sections for c in expand(s, study)]
    names = [c.contrast.name for c in claims]
    assert len(names) == len(set(names))  # every claim has its own name
    assert "mnist1d_cnn: (BN(2) − BN(32)) − (GN(2) − GN(32))" in names
    interaction = next(
        c for c in claims if c.contrast.name == "mnist1d_cnn: (BN(2) − BN(32)) − (GN(2) − GN(32))"
    )
    weights = sorted(w for _, w in interaction.contrast.terms)
    assert weights == [-1.0, -1.0, 1.0, 1.0]
    assert all(
        sel["task"] == "mnist1d_cnn" and sel["data.sampler"] == "iid" for sel, _ in interaction.contrast.terms
    )
    scale = next(c for c in claims if c.contrast.name == "mnist1d_mlp: identity, init scale 4.0 − scale 1")
    assert scale.contrast.terms[0][0]["task.model.init_scale"] == 4.0 and not scale.selected


def _sweeper_params(preset: str) -> dict[str, list[str]]:
    from hydra import compose, initialize_config_dir

    from normbench.cli import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    params.setdefault("task", [cfg.task.name])
    return params


def _assert_bracketable(values: list[str], study) -> None:
    """A learning-rate grid of three points a factor 2 apart, inside the bracket's bounds."""
    lrs = sorted(float(v) for v in values)
    assert len(lrs) == 3 and lrs[1] == 2 * lrs[0] and lrs[2] == 2 * lrs[1]
    assert study.bracket.low <= lrs[0] and lrs[-1] <= study.bracket.high


def _primary_claims(study) -> tuple[list, list, list[dict[str, list[str]]]]:
    """The study's claims, its primary ones, and the sweeper grid of each of its sweeps."""
    claims = [c for s in study.sections for c in expand(s, study)]
    return (
        claims,
        [c for c in claims if c.family == "primary"],
        [_sweeper_params(s["preset"]) for s in study.sweeps],
    )


def _seeds(cell: dict, grids: list[dict[str, list[str]]]) -> set[str]:
    """The seeds the study's sweeps train a claim's cell with (a grid matches on the keys it sweeps)."""
    return {
        seed
        for grid in grids
        if all(str(v) in grid[k] for k, v in cell.items() if k in grid)
        for seed in grid["seed"]
    }


def test_the_curve_study_declares_a_small_primary_family_with_ten_seeds_in_its_cells():
    study = load_study(ROOT / "conf/study/small_batch.yaml")
    claims, primary, grids = _primary_claims(study)
    assert 0 < len(primary) <= 12 and len({c.contrast.name for c in claims}) == len(claims)
    for claim in primary:
        for cell, _ in claim.contrast.terms:
            assert len(_seeds(cell, grids)) == 10, (claim.contrast.name, cell)
            assert not any(  # no degenerate cell in the primary family
                all(cell.get(k) == v for k, v in entry["where"].items()) for entry in study.degenerate
            )
    for grid in grids:
        _assert_bracketable(grid["optim.lr"], study)
        assert len(grid["seed"]) >= 5


def test_the_recurrent_and_gan_study_declares_its_primary_family_with_ten_seeds_in_its_cells():
    study = load_study(ROOT / "conf/study/sequence_gan.yaml")
    claims, primary, grids = _primary_claims(study)
    assert len(primary) == 8 and len({c.contrast.name for c in claims}) == len(claims)
    for claim in primary:
        for cell, _ in claim.contrast.terms:
            assert len(_seeds(cell, grids)) == 10, (claim.contrast.name, cell)
    for grid in grids:
        if "optim.lr" in grid:  # the recurrent nets' (the GAN keeps DCGAN's)
            _assert_bracketable(grid["optim.lr"], study)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument '--bogus' (allowed: --smoke, --large"),
        (["--smoke", "--large"], "--smoke and --large exclude each other"),
        (["--jobs", "0"], "--jobs must be a positive integer, got '0'"),
        (
            ["--out", "/dev/null/study"],
            "--out /dev/null/study: cannot make that folder (a file, or no permission)",
        ),
        (
            ["--task", "mnist2d"],
            "--task mnist2d: task=mnist2d: unknown task; did you mean mnist1d_mlp? (available: cifar100_resnet20,",
        ),
        # it trained nothing, then the report failed on an empty records file it had written
        (
            ["--study", "conf/study/cifar.yaml", "--smoke"],
            "cifar.yaml: lists no sweeps to train (no `sweeps:`): it describes a report only",
        ),
        # the last one was taken: a user asking for two curves got one, saying nothing
        (["--task", "mnist1d_mlp", "--task", "mnist1d_cnn"], "--task given twice ('mnist1d_mlp' first)"),
        (["--out", str(Path("/tmp") / "a"), "--out", "b"], "--out given twice ('/tmp/a' first)"),
    ],
)
def test_study_script_refuses_bad_arguments_before_any_work(tmp_path, args, message):
    import subprocess

    venv_bin = str(Path(sys.executable).parent)  # normbench-run, as make puts .venv/bin on PATH
    own_out = [] if args[0] == "--out" else ["--out", str(tmp_path / "out")]
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/small_batch_study.sh"), *own_out, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"},
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_study_script_refuses_a_folder_whose_figures_its_report_would_replace_before_training(tmp_path):
    import subprocess

    paper = tmp_path / "paper"
    (paper / "figures").mkdir(parents=True)
    (paper / "figures" / "fig1.pdf").write_text("a user's figure")
    venv_bin = str(Path(sys.executable).parent)
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/small_batch_study.sh"), "--smoke", "--out", str(paper)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"small_batch_study.sh: --out {paper}: holds figures, which a report there would replace, and no "
        "report of normbench-report; give a new or empty folder, or one of its earlier reports"
    ]
    assert sorted(p.relative_to(paper).as_posix() for p in paper.rglob("*")) == [
        "figures",
        "figures/fig1.pdf",
    ]


def test_the_sweeps_of_a_study_in_each_mode():
    from normbench.report.study import sweep_commands

    study = load_study(ROOT / "conf/study/small_batch_v1.yaml")
    full = sweep_commands(study)
    assert [p for p, _ in full] == [
        "small_batch_mlp",
        "small_batch_cnn",
        "small_batch_b2",
        "small_batch_noniid",
        "small_batch_ghost",
        "small_batch_init",
    ]
    assert all(extra == [] for _, extra in full)
    smoke = dict(sweep_commands(study, "smoke"))
    assert smoke["small_batch_mlp"] == [
        "hydra.sweeper.params={norm:'batchnorm,groupnorm,identity',optim.lr:'0.05,0.8',seed:'0,1'}",
        "train.epochs=1",
    ]
    large = dict(sweep_commands(study, "large"))
    assert (
        "batch_size:'2,4,8,16,32,64,128'" in large["small_batch_cnn"][0]
        and "instancenorm" in large["small_batch_cnn"][0]
    )
    assert large["small_batch_b2"] == []  # no large grid: the sweep as it is
    with pytest.raises(StudyError, match="mode='tiny'; allowed: full, smoke, large"):
        sweep_commands(study, "tiny")


def test_the_sweep_list_of_a_study_that_trains_nothing_in_a_mode_is_an_error(tmp_path, capsys):
    from normbench.report.study import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(ROOT / "conf/study/cifar.yaml")])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("cifar.yaml: lists no sweeps to train (no `sweeps:`): it describes a report only")
    )
    text = (ROOT / "conf/study/small_batch_v1.yaml").read_text()
    no_smoke = tmp_path / "no_smoke.yaml"  # every sweep set to `smoke: false`
    no_smoke.write_text(re.sub(r"^([ \t]+)smoke: .*$", r"\1smoke: false", text, flags=re.M))
    main([str(no_smoke), "full"])
    assert capsys.readouterr().out.startswith("small_batch_mlp")
    with pytest.raises(SystemExit):
        main([str(no_smoke), "smoke"])
    assert (
        capsys.readouterr().err.strip() == f"study: error: {no_smoke}: every sweep is left out of smoke mode"
    )


def test_later_keys_are_filled_with_their_old_value_only_where_some_run_sets_them():
    import pandas as pd

    from normbench.report.load import with_later_defaults

    runs = pd.DataFrame({"task.model.init_scale": [4.0, None], "optim.lr": [0.1, 0.2]})
    filled = with_later_defaults(runs.copy())
    assert filled["task.model.init_scale"].tolist() == [4.0, 1.0]  # the run that predates the key ran at 1.0
    assert "task.model.g_norm" not in filled  # a key no run sets gets no column
    assert filled["optim.lr"].tolist() == [0.1, 0.2]


FAMILIES = """
title: Families
select: [optim.lr]
does_not_train_at: 0.5
equivalence_margin: 0.05
degenerate:
  - where: {norm: groupnorm, batch_size: 2}
    reason: a toy reason.
sections:
  - title: Primary
    claims:
      - name: "{norm}(2) − {norm}(32)"
        for_each: {norm: [batchnorm, groupnorm]}
        where: {norm: "{norm}"}
        plus: [{batch_size: 2}]
        minus: [{batch_size: 32}]
      - name: "groupnorm − batchnorm at 32"
        where: {batch_size: 32}
        plus: [{norm: groupnorm}]
        minus: [{norm: batchnorm}]
      - name: "groupnorm agrees with batchnorm at 32"
        equivalence: true
        where: {batch_size: 32}
        plus: [{norm: groupnorm}]
        minus: [{norm: batchnorm}]
  - title: Explore
    family: exploratory
    claims:
      - name: "batchnorm(32) − groupnorm(2)"
        plus: [{norm: batchnorm, batch_size: 32}]
        minus: [{norm: groupnorm, batch_size: 2}]
      - name: "explore: batchnorm(32) − groupnorm(32)"
        where: {batch_size: 32}
        plus: [{norm: batchnorm}]
        minus: [{norm: groupnorm}]
  - title: Another metric
    family: exploratory
    metric: test_loss
    unit: {scale: 1, name: nats}
    claims:
      - name: "loss: batchnorm(32) − groupnorm(32)"
        where: {batch_size: 32}
        plus: [{norm: batchnorm}]
        minus: [{norm: groupnorm}]
"""


def test_holm_is_within_the_primary_family_and_untrained_or_degenerate_cells_are_not_tested(study_dir):
    (study_dir / "families.yaml").write_text(FAMILIES)
    text = build_report(
        [study_dir / "sweeps"], study_dir / "out", study=study_dir / "families.yaml"
    ).read_text()
    e = {k: np.array(v) for k, v in ERRORS.items()}
    difference = e["groupnorm", 32] - e["batchnorm", 32]
    p_diff = ttest_1samp(difference, 0).pvalue
    p_tost = max(
        ttest_1samp(difference, -0.05, alternative="greater").pvalue,
        ttest_1samp(difference, 0.05, alternative="less").pvalue,
    )
    adjusted = holm([p_diff, p_tost])  # the family: the two primary claims with trained cells
    assert f"Holm-adjusted p = {adjusted[0]:.3g}" in _line(text, "groupnorm − batchnorm at 32")
    agree = _line(text, "groupnorm agrees with batchnorm at 32")
    assert f"TOST p = {p_tost:.3g} against ±5 pp" in agree
    assert ("equivalent within ±5 pp (established)" in agree) == (adjusted[1] < 0.05)
    assert "Findings" in text and "primary claims are established" in text
    bn = _line(text, "batchnorm(2) − batchnorm(32)")
    assert bn.endswith(
        f"not tested (cell norm=batchnorm, batch_size=2 does not train: mean test_error {e['batchnorm', 2].mean() * 100:.1f} >= 50%)."
    )
    for name in ("groupnorm(2) − groupnorm(32)", "batchnorm(32) − groupnorm(2)"):
        assert "not tested (degenerate cell " in _line(text, name) and "see the protocol" in _line(text, name)
    explore = _line(text, "explore: batchnorm(32) − groupnorm(32)")
    assert "Holm" not in explore and "over 3 paired seeds" in explore
    assert "TOST" in explore and "TOST" not in _line(
        text, "loss: batchnorm(32) − groupnorm(32)"
    )  # ±5 pp is no loss margin
    assert "Degenerate cells (norm=groupnorm, batch_size=2): a toy reason." in text
    assert "did not train: claims on it are reported as not tested" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        ("equivalence_margin: -1", "equivalence_margin=-1: must be a positive number"),
        ("degenerate: [{where: {norm: batchnorm}}]", "degenerate[0] needs where (the cells) and reason"),
    ],
)
def test_bad_statistics_settings_are_refused(tmp_path, extra, message):
    path = tmp_path / "s.yaml"
    path.write_text(STUDY + extra + "\n")
    with pytest.raises(StudyError, match=re.escape(message)):
        load_study(path)


@pytest.mark.parametrize(
    "extra, message",
    [  # one of each kind a description's values hold (normbench.report.study.KINDS)
        ("reference_batch: 7.5", "study description {path}: reference_batch=7.5: must be an integer >= 1"),
        ("reference_batch: true", "study description {path}: reference_batch=True: must be an integer >= 1"),
        ("metric: 7", "study description {path}: metric=7: must be a string"),
        ("select: optim.lr", "study description {path}: select='optim.lr': must be a list of strings"),
        ("diverged_as: .inf", "study description {path}: diverged_as=inf: must be a number"),
        ("does_not_train_at: 0", "study description {path}: does_not_train_at=0: must be a positive number"),
        ("smoke: 5", "study description {path}: smoke=5: must be a list of strings"),
        ("bracket: 5", "study description {path}: bracket=5: must be a mapping"),
        ("sweeps: [{preset: x, smoke: true}]", "{path}: sweeps[0]: smoke=True: must be a mapping or false"),
        (
            "degenerate: [{where: {norm: x}, reason: [1]}]",
            "{path}: degenerate[0]: reason=[1]: must be a string",
        ),
        (
            "derived: {a: {history: x, at_most: {toy: high}}}",
            "{path}: derived.a.at_most.toy='high': must be a number",
        ),
        (
            "derived: {a: {history: x}}",
            "{path}: derived.a needs history (a history key) and at_most (per task)",
        ),
        # a section's and a claim's values
        ("sections: [{title: x, unit: 5}]", "{path}: sections[0]: unit=5: must be a mapping"),
        (
            "sections: [{title: x, unit: {scale: 0}}]",
            "{path}: sections[0].unit: scale=0: must be a positive number",
        ),
        (
            "sections: [{title: x, unit: {size: 1}}]",
            "{path}: sections[0].unit: unknown key 'size'; allowed: name, scale",
        ),
        (
            "sections: [{title: x, selected: 'no'}]",
            "{path}: sections[0]: selected='no': must be true or false",
        ),
        ("sections: [{title: x, claims: 3}]", "{path}: sections[0]: claims=3: must be a list"),
        ("sections: [{title: [x]}]", "{path}: sections[0]: title=['x']: must be a string"),
        (
            "sections: [{title: x, claims: [{name: a, plus: {norm: x}}]}]",
            "{path}: sections[0].claims[0]: plus={{'norm': 'x'}}: must be a list of mappings",
        ),
        (  # a string would be looped over letter by letter
            "sections: [{title: x, claims: [{name: a, plus: [{}], for_each: {n: ab}}]}]",
            "{path}: sections[0].claims[0]: for_each={{'n': 'ab'}}: must be a mapping of lists",
        ),
    ],
)
def test_a_value_of_the_wrong_kind_is_named_with_the_kind_allowed(tmp_path, extra, message):
    path = tmp_path / "s.yaml"
    path.write_text(f"{extra}\n")
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert str(info.value) == message.format(path=path)


def test_a_key_set_to_null_is_left_out(tmp_path):
    path = tmp_path / "nulls.yaml"
    path.write_text(
        "title: null\nreference_batch: null\nsections:\n  - {title: x, where: null, unit: null}\n"
    )
    study = load_study(path)
    assert (study.title, study.reference_batch) == ("nulls", 32)
    assert study.sections[0].where == {} and study.sections[0].unit == Unit()


def test_a_claim_on_a_metric_the_runs_lack_is_one_line_and_leaves_no_folder(study_dir, capsys):
    (study_dir / "study.yaml").write_text(STUDY.replace("metric: test_error\n", "metric: test_eror\n", 1))
    out = study_dir / "out"
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(study_dir / "sweeps"), "--out", str(out), "--study", str(study_dir / "study.yaml")])
    assert exit_info.value.code == 2 and not out.exists()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        "normbench-report: error: section 'Batch': contrast '(BN(2) − BN(32)) − (GN(2) − GN(32))': "
        "no metric 'test_eror' in the runs; theirs: test_error, "
    )


def test_an_equivalence_claim_on_another_metric_than_the_margins_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(FAMILIES.replace("  - title: Primary\n", "  - title: Primary\n    metric: test_loss\n"))
    message = "an equivalence claim on metric=test_loss; the study's equivalence_margin is in units of its metric=test_error"
    with pytest.raises(StudyError, match=re.escape(message)):
        load_study(path)


def test_a_bad_family_names_what_is_allowed(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(FAMILIES.replace("family: exploratory", "family: secondary"))
    with pytest.raises(StudyError, match=re.escape("family='secondary'; allowed: primary, exploratory")):
        load_study(path)


CURVE = """
title: Curve
select: [optim.lr]
degenerate:
  - where: {norm: batchnorm, batch_size: 2}
    reason: a toy reason.
sections:
  - title: Which norm at my batch size
    family: exploratory
    curve: {panels: task, lines: norm}
"""


def test_the_curve_table_picks_the_best_norm_on_validation_and_prices_the_others(study_dir):
    (study_dir / "curve.yaml").write_text(
        CURVE.replace("  - where: {norm: batchnorm, batch_size: 2}\n", "  - where: {norm: layernorm}\n")
    )
    out = study_dir / "out"
    text = build_report([study_dir / "sweeps"], out, study=study_dir / "curve.yaml").read_text()
    e = {k: np.array(v) for k, v in ERRORS.items()}
    frame = pd.read_csv(out / "curve_Which-norm-at-my-batch-size.csv")
    best = frame[frame["best"]].set_index("batch_size")["norm"].to_dict()
    assert best == {2: "groupnorm", 32: "batchnorm"}  # lowest validation error (= test error + 0 here)
    bn2 = frame[(frame["norm"] == "batchnorm") & (frame["batch_size"] == 2)].iloc[0]
    cost = _interval(e["batchnorm", 2] - e["groupnorm", 2])
    assert (bn2["cost"], bn2["cost_low"], bn2["cost_high"]) == pytest.approx(cost, rel=1e-5)
    assert (bn2["mean"], bn2["low"], bn2["high"]) == pytest.approx(_interval(e["batchnorm", 2]), rel=1e-5)
    gn2 = _interval(e["groupnorm", 2])
    row = next(line for line in text.splitlines() if re.match(r"\|\s+2 \|", line))
    assert f"**{gn2[0] * 100:.1f} [{gn2[1] * 100:.1f}, {gn2[2] * 100:.1f}]** · best" in row
    assert f" · {cost[0] * 100:+.1f} [{cost[1] * 100:+.1f}, {cost[2] * 100:+.1f}]" in row
    assert row.rstrip(" |").endswith("groupnorm")
    assert (out / "figures" / "curve_Which-norm-at-my-batch-size.svg").stat().st_size > 10_000


def test_a_degenerate_cell_is_never_the_best_and_is_marked(study_dir):
    (study_dir / "curve.yaml").write_text(
        CURVE.replace("{norm: batchnorm, batch_size: 2}", "{norm: groupnorm, batch_size: 2}")
    )
    out = study_dir / "out"
    text = build_report([study_dir / "sweeps"], out, study=study_dir / "curve.yaml").read_text()
    frame = pd.read_csv(out / "curve_Which-norm-at-my-batch-size.csv", keep_default_na=False)
    at2 = frame[frame["batch_size"] == 2].set_index("norm")
    assert at2.loc["groupnorm", "degenerate"] == "a toy reason." and not at2.loc["groupnorm", "best"]
    assert at2.loc["batchnorm", "best"]  # the only norm left, though its error is higher
    row = next(line for line in text.splitlines() if re.match(r"\|\s+2 \|", line))
    assert " †" in row


def test_the_protocol_says_where_each_task_validated_and_which_selects_nothing():
    drawn = pd.DataFrame(
        {
            "optim.lr": [0.1, 0.2],
            "val_error": [0.02, 0.03],
            "data.val_size": 0.0,
            "data.mnist1d_val_samples": 4000,
        }
    )
    assert _selection_lines("cnn", drawn, ["optim.lr"]) == [
        "- **cnn**: `optim.lr` chosen per cell on a validation set of 4000 new draws "
        "(`data.mnist1d_val_samples`), from: 0.1, 0.2."
    ]
    gan = pd.DataFrame({"optim.lr": [0.0002], "val_error": [float("nan")], "data.val_size": 0.1})
    assert _selection_lines("gan", gan, ["optim.lr"]) == [
        "- **gan**: `optim.lr` not selected (no validation error to select on): 0.0002."
    ]


def test_a_table_over_settings_no_run_has_yet_is_empty_while_the_others_fill():
    """A study trained in parts: its GAN table names task.model.d_norm before any GAN ran."""
    runs = pd.DataFrame(
        {
            "task": ["digits_lstm"] * 2,
            "norm": ["batchnorm", "identity"],
            "status": ["completed"] * 2,
            "test_error": [0.1, 0.3],
        }
    )
    gan = {"rows": "task.model.g_norm", "columns": "task.model.d_norm"}
    where = {"task": "gan_digits", "task.model.d_norm": "batchnorm"}
    assert cell_table(runs, gan, where, "test_error", Unit(), None).empty
    table = cell_table(
        runs, {"rows": "norm", "columns": "task"}, {"task": "digits_lstm"}, "test_error", Unit(), None
    )
    assert (
        table.shape == (2, 1) and table.iloc[0, 0].startswith("10.0") and table.iloc[1, 0].startswith("30.0")
    )
