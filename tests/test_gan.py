"""The GAN task: the Fréchet distance against closed forms, class coverage, the cached classifier, and
short runs through normbench-run's code path (separate norms for G and D, mixed batches, refusals)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from helpers import compose_cfg, csv_rows, normbench_run_here, tracked_values

from normbench.config import ConfigError
from normbench.experiment.run import execute
from normbench.norms import build_norm
from normbench.tasks.gan import covered_classes, feature_classifier, frechet_distance

QUICK = ("optim=dcgan", "train.budget=steps", "train.steps=6", "train.history_points=2")


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()  # W2² of diagonal Gaussians (σ: std)
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_full_covariances_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    c1, c2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(reference, rel=1e-8)
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0, abs=1e-9)


def test_covered_classes_counts_classes_with_half_their_uniform_share():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 15 + [3] * 5)  # K = 4: half the share is 12.5%
    assert covered_classes(labels, 4) == (3, 0.5)


def test_the_classifier_is_trained_once_and_then_loaded(tmp_path):
    x, y = torch.randn(200, 1, 8, 8), torch.arange(200) % 10
    first, digest = feature_classifier(x, y, 10, {"dataset": "toy"}, tmp_path)
    (path,) = (tmp_path / "feature_classifier").glob("*.pt")
    assert path.stem == digest
    stamp = path.stat().st_mtime_ns
    second, digest2 = feature_classifier(x, y, 10, {"dataset": "toy"}, tmp_path)
    assert digest2 == digest and path.stat().st_mtime_ns == stamp
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    _, digest3 = feature_classifier(x, y, 10, {"dataset": "other"}, tmp_path)
    assert digest3 != digest
    path.write_bytes(b"cut short")  # a cache file a full disk or another tool left: trained again
    third, _ = feature_classifier(x, y, 10, {"dataset": "toy"}, tmp_path)
    for p, q in zip(first.parameters(), third.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert feature_classifier(x, y, 10, {"dataset": "toy"}, tmp_path)[0].state_dict().keys()  # readable
    assert path.read_bytes() != b"cut short"


@pytest.mark.parametrize("task", ["gan_digits", "gan_mnist1d"])
def test_gan_runs_record_their_measures_and_a_sample_grid(tmp_path, monkeypatch, task):
    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path / "cache"))
    overrides = (f"task={task}", "norm=batchnorm", "batch_size=16", "data.mnist1d_samples=500", "logger=csv")
    record = execute(compose_cfg(*overrides, *QUICK), tmp_path / "run")
    assert record["status"] == "completed", record.get("error")
    m = record["metrics"]
    assert m["fd"] > 0 and 1 <= m["classes_covered"] <= 10 and 0.1 <= m["class_share_max"] <= 1
    assert "fd_batch_stats" in m and m["fd_real"] < m["fd"]  # real samples are the floor
    assert isinstance(m["mode_collapsed"], bool)
    assert [p["step"] for p in record["history"]] == [3, 6]
    assert (tmp_path / "run" / "samples.png").stat().st_size > 0
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["main_metric"] == {"name": "fd", "lower_is_better": True}
    # its own loop streams nothing: the tracker gets the record once written (it got nothing before)
    assert csv_rows(tmp_path / "run" / "metrics.csv") == pytest.approx(tracked_values(saved))


def test_generator_and_discriminator_norms_are_chosen_separately(tmp_path, monkeypatch):
    from normbench.experiment.build import model_and_norms
    from normbench.tasks import load_dataset

    data = load_dataset("digits")
    cfg = compose_cfg("task=gan_digits", "norm=batchnorm", "task.model.d_norm=layernorm")
    gan, norms = model_and_norms(cfg, data)
    g_types = {type(m).__name__ for m in gan.generator.modules() if m in norms}
    d_types = {type(m).__name__ for m in gan.discriminator.modules() if m in norms}
    assert g_types == {type(build_norm("batchnorm", 4)).__name__}
    assert d_types == {type(build_norm("layernorm", 4)).__name__}
    assert sum(1 for m in gan.generator.modules() if m in norms) == 2
    assert sum(1 for m in gan.discriminator.modules() if m in norms) == 1


def test_mixed_batches_change_what_batchnorm_in_d_sees(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path / "cache"))
    losses = {}
    for mode in ("separate", "mixed"):
        cfg = compose_cfg("task=gan_digits", "norm=batchnorm", f"task.model.d_batches={mode}", *QUICK)
        record = execute(cfg, tmp_path / mode)
        losses[mode] = record["metrics"]["d_loss"]
    assert losses["separate"] != pytest.approx(losses["mixed"], rel=1e-3)
    # with a batch-independent D the two modes compute the same thing
    same = {}
    for mode in ("separate", "mixed"):
        cfg = compose_cfg(
            "task=gan_digits", "norm=layernorm", f"task.model.d_batches={mode}", *QUICK, "runtime.force=true"
        )
        same[mode] = execute(cfg, tmp_path / f"ln_{mode}")["metrics"]["d_loss"]
    assert same["separate"] == pytest.approx(same["mixed"], rel=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("task.model.g_norm=nonorm",),
            r"task.model.g_norm=nonorm: not a registered norm; available: .*batchnorm",
        ),
        (("batch_size=2000",), r"batch_size=2000: must be between 1 and the training set size"),
        (
            ("runtime.precision=fp16",),
            r"runtime.precision=fp16: task=gan_digits has no gradient scaler.*bf16 or fp32",
        ),
        (("task.model.latent=0",), r"task.model.latent=0.*>= 1"),
        (  # statistics nothing estimates: a fixed scale under a norm's name
            ("task.model.g_norm=frozen_batchnorm",),
            r"^task.model.g_norm=frozen_batchnorm: normalizes with running statistics that training never",
        ),
        (("task.model.d_norm=frozenbn",), r"^task.model.d_norm=frozenbn: .*mean 0, variance 1"),
    ],
)
def test_bad_gan_settings_are_refused_before_training(tmp_path, overrides, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        execute(compose_cfg("task=gan_digits", *QUICK, *overrides), tmp_path / "run")
    assert not (tmp_path / "run" / "result.json").exists()


def test_batch_size_one_trains_with_a_batch_independent_norm(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path / "cache"))
    record = execute(
        compose_cfg("task=gan_digits", "norm=layernorm", "batch_size=1", *QUICK), tmp_path / "run"
    )
    assert record["status"] == "completed" and "fd_batch_stats" not in record["metrics"]


def test_an_unknown_d_batches_mode_names_the_allowed_ones(tmp_path, monkeypatch, capsys):
    args = ("task=gan_digits", "task.model.d_batches=both")
    status, stderr = normbench_run_here(*args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2 and "expected one of [separate, mixed]" in stderr
    assert not list(tmp_path.rglob("result.json"))


def test_a_gan_sweep_reports_its_own_main_metric(tmp_path, monkeypatch):
    from normbench.report.build import build_report

    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path / "cache"))
    fds = {}
    for norm in ("batchnorm", "layernorm"):
        for seed in (0, 1):
            for bs in (8, 16):
                cfg = compose_cfg(
                    "task=gan_digits", f"norm={norm}", f"seed={seed}", f"batch_size={bs}", *QUICK
                )
                fds[norm, seed, bs] = execute(cfg, tmp_path / "sweep" / f"{norm}{seed}{bs}")["metrics"]["fd"]
    text = build_report([tmp_path / "sweep"], tmp_path / "out").read_text()
    assert "Main metric: `fd` (lower is better) for gan_digits." in text and "## FD vs batch size" in text
    bn = np.array([fds["batchnorm", 0, 8], fds["batchnorm", 1, 8]])
    assert f"{bn.mean():.1f} ± {bn.std(ddof=1):.1f}" in text
    # classification runs beside them: each task's metric gets its own sections
    for bs in (8, 16):
        cfg = compose_cfg("task=digits_cnn", "train.budget=steps", "train.steps=2", f"batch_size={bs}")
        execute(cfg, tmp_path / "sweep" / f"c{bs}")
    text = build_report([tmp_path / "sweep"], tmp_path / "out2").read_text()
    assert (
        "Main metric: `test_error` (lower is better) for digits_cnn; `fd` (lower is better) for gan_digits"
        in text
    )
    assert "## Test error vs batch size" in text and "## FD vs batch size" in text
    summary = pd.read_csv(tmp_path / "out2" / "summary.csv")
    pairs = set(zip(summary["task"], summary["metric"], strict=True))
    assert pairs == {("digits_cnn", "test_error"), ("gan_digits", "fd")}
    assert (tmp_path / "out2" / "figures" / "fd_vs_batch_all.svg").exists()
