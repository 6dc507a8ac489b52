"""The small-batch study's report sections, on hand-made records with known numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from normbench.report.build import build_report

# test error per (norm, batch size, seed): BN degrades at batch 2 far beyond its seed spread; GN does not.
ERRORS = {
    ("batchnorm", 2): [0.50, 0.52, 0.54],
    ("batchnorm", 32): [0.20, 0.21, 0.22],
    ("groupnorm", 2): [0.24, 0.25, 0.26],
    ("groupnorm", 32): [0.24, 0.24, 0.24],
}


def record(i: int, norm: str, bs: int, seed: int, err: float, sampler: str = "iid", **norm_options) -> dict:
    metrics = {"test_error": err, "test_loss": 1.0, "train_error": err / 2, "train_loss": 0.5}
    if norm in ("batchnorm", "ghost_batchnorm"):
        metrics |= {
            "test_error_precise_bn": err - 0.05,
            "test_error_minibatch": err + 0.1,
            "test_error_minibatch_sorted": 0.9,
            "running_mean_rel_l2": 0.5,
            "running_var_rel_l2": 0.25,
        }
    return {
        "schema_version": 2,
        "status": "completed",
        "config_hash": f"{i:016x}",
        "config": {
            "task": {"name": "toy"},
            "norm": {"name": norm, **norm_options},
            "batch_size": bs,
            "seed": seed,
            "train": {"budget": "epochs", "epochs": 3},
            "data": {"sampler": sampler, "classes_per_batch": 2},
        },
        "metrics": metrics,
        "history": [{"step": 1, "epoch": 1.0, "train_loss": 1.0, "test_error": err}],
        "finished_at": "2026-01-01T00:00:00",
    }


@pytest.fixture
def study_dir(tmp_path) -> Path:
    records = []
    for (norm, bs), errs in ERRORS.items():
        for seed, err in enumerate(errs):
            records.append(record(len(records), norm, bs, seed, err))
    for seed in range(2):
        records.append(record(len(records), "batchnorm", 32, seed, 0.6, sampler="class_grouped"))
        for ghost, err in ((2, 0.4), (32, 0.2)):
            records.append(record(len(records), "ghost_batchnorm", 32, seed, err, ghost_batch_size=ghost))
    for r in records:
        folder = tmp_path / "sweeps" / r["config_hash"]
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(r))
    return tmp_path


def test_reading_compares_with_gn_table2_and_names_the_visible_failure(study_dir):
    text = build_report([study_dir / "sweeps"], study_dir / "out").read_text()
    assert "from 23.6% at 32 images per GPU to 34.7% at 2 (+11.1 pp)" in text
    # BN: 21.0 -> 52.0 (+31.0); GN: 24.0 -> 25.0 (+1.0)
    row = re.search(r"^\|\s+toy \|\s+epochs \|(.*)\|$", text, re.M)
    assert [c.strip() for c in row.group(1).split("|")] == ["21.0", "52.0", "+31.0", "+1.0"]
    assert "- toy (epochs budget): BN 21.0% → 52.0% (seed ranges do not overlap), GN Δ +1.0 pp" in text


def test_inconsistency_noniid_and_ghost_sections(study_dir):
    out = study_dir / "out"
    text = build_report([study_dir / "sweeps"], out).read_text()
    section = text.split("## Train-test inconsistency", 1)[1].split("\n## ", 1)[0]
    # batch 2: EMA 52.0, PreciseBN 47.0, mini-batch 62.0, EMA - PreciseBN +5.0 pp
    assert "52.0" in section and "47.0" in section and "62.0" in section and "+5.0" in section
    assert (out / "figures" / "inconsistency.png").stat().st_size > 0
    noniid = text.split("## Non-i.i.d. batches", 1)[1].split("\n## ", 1)[0]
    assert "Training batches hold 2 classes each" in noniid
    assert "21.0 ± 1.0" in noniid and "60.0 ± 0.0" in noniid and "+39.0" in noniid and "90.0" in noniid
    ghost = text.split("## Normalization batch vs optimisation batch", 1)[1].split("\n## ", 1)[0]
    assert "40.0 ± 0.0" in ghost and "20.0 ± 0.0" in ghost
    assert (out / "figures" / "ghost_batch.svg").exists()


def test_sections_left_out_without_their_runs(tmp_path):
    r = record(0, "groupnorm", 32, 0, 0.3)
    (tmp_path / "s" / "a").mkdir(parents=True)
    (tmp_path / "s" / "a" / "result.json").write_text(json.dumps(r))
    text = build_report([tmp_path / "s"], tmp_path / "out").read_text()
    for title in ("## Reading", "## Train-test", "## Non-i.i.d.", "## Normalization batch"):
        assert title not in text
