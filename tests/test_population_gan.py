"""GANs as populations (:mod:`normbench.population.adversarial`): every member's record is its separate
run's (:func:`normbench.train_gan.train_gan`) to float rounding, a diverging member stops where its
run stops and leaves the others as they were, and the population launcher groups GAN runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import compose_cfg, normbench_run

from normbench.experiment.run import execute
from normbench.population.grouping import partition, why_not_population
from normbench.population.train import train_population

STEPS = ("task=gan_digits", "optim=dcgan", "batch_size=16", "train.budget=steps", "train.steps=10")


def _both(cfgs, tmp_path: Path) -> list[tuple[dict, dict]]:
    """Each config's record from one population and from its run alone."""
    dirs = [tmp_path / f"member{i}" for i in range(len(cfgs))]
    for d in dirs:
        d.mkdir()
    members = train_population(cfgs, False, "auto", dirs)
    return [
        (m, execute(cfg, tmp_path / f"alone{i}"))
        for i, (cfg, m) in enumerate(zip(cfgs, members, strict=True))
    ]


def _assert_close(member: dict, alone: dict, keys, rel: float = 1e-5) -> None:
    for key in keys:
        assert member["metrics"][key] == pytest.approx(alone["metrics"][key], rel=rel), key


def test_each_member_records_what_its_run_alone_records(tmp_path):
    nets = ("task.model.g_norm=identity", "task.model.d_norm=layernorm", "train.history_points=2")
    cfgs = [
        compose_cfg(*STEPS, *nets, f"seed={s}", f"optim.lr={lr}")
        for s, lr in ((0, 2e-4), (1, 2e-4), (0, 5e-4))
    ]
    for member, alone in _both(cfgs, tmp_path):
        assert member["status"] == alone["status"] == "completed"
        assert member["env"]["population"] == 3 and member["env"]["population_form"] == "vmap"
        assert member["steps"] == alone["steps"] == 10 and member["lr"] == alone["lr"]
        assert set(member["metrics"]) == set(alone["metrics"])
        _assert_close(member, alone, [k for k, v in alone["metrics"].items() if isinstance(v, float)])
        assert [p["step"] for p in member["history"]] == [p["step"] for p in alone["history"]] == [5, 10]
        for mine, theirs in zip(member["history"], alone["history"], strict=True):
            assert mine["fd"] == pytest.approx(theirs["fd"], rel=1e-5)
        assert member["fd_classifier"] == alone["fd_classifier"]
        assert (tmp_path / "member0" / "samples.png").is_file()


def test_with_batchnorm_the_training_mode_measures_agree(tmp_path):
    """BatchNorm cancels the bias of the convolution before it, so that bias's gradient is rounding
    noise, which Adam scales to full-size steps: the biases, and with them the running means that eval
    mode reads, drift apart between two trainings that agree in everything batch statistics see. The
    losses and the distance of batch-statistics samples agree to float rounding."""
    nets = ("task.model.g_norm=batchnorm", "task.model.d_norm=batchnorm")
    cfgs = [compose_cfg(*STEPS, *nets, f"seed={s}") for s in (0, 1)]
    for member, alone in _both(cfgs, tmp_path):
        _assert_close(member, alone, ["d_loss", "g_loss", "fd_batch_stats"])


def test_a_diverging_member_stops_where_its_run_stops_and_the_others_are_untouched(tmp_path):
    nets = ("optim.name=sgd", "task.model.g_norm=identity", "task.model.d_norm=layernorm")
    cfgs = [compose_cfg(*STEPS, *nets, f"optim.lr={lr}") for lr in (0.05, 1e6)]
    (healthy, healthy_alone), (wild, wild_alone) = _both(cfgs, tmp_path)
    assert wild["status"] == wild_alone["status"] == "diverged"
    assert (
        wild["diverged_at_step"] == wild_alone["diverged_at_step"]
        and wild["history"] == wild_alone["history"]
    )
    assert healthy["status"] == "completed"
    _assert_close(healthy, healthy_alone, ["d_loss", "g_loss", "fd"])


def test_gan_runs_form_populations_except_with_checkpoints():
    cfgs = [compose_cfg("task=gan_digits", f"seed={s}") for s in (0, 1)]
    assert why_not_population(cfgs[0]) is None and partition(cfgs, 64) == [[0, 1]]


def test_a_gan_sweep_trains_as_one_population(tmp_path):
    proc = normbench_run(
        "-m",
        *STEPS,
        "seed=0,1",
        "sweep.root=sw",
        "hydra/launcher=population",
        "train.history_points=1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("sw/**/result.json"))]
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert {r["env"]["population"] for r in records} == {2} and sorted(
        r["config"]["seed"] for r in records
    ) == [0, 1]
