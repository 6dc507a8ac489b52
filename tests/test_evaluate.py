"""PreciseBN, mini-batch-statistics evaluation and the stability metrics of a run."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import QUICK, compose_cfg
from torch import nn

from normbench import build_norm
from normbench.evaluate import error_and_loss, minibatch_error, precise_bn, stats_distance
from normbench.experiment.run import execute


def bn_model(c: int = 4) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, c), build_norm("batchnorm", c), nn.ReLU(), nn.Linear(c, c), build_norm("bn", c)
    )


def data(n: int = 60):
    gen = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, generator=gen) * 2 + 1, torch.randint(0, 4, (n,), generator=gen)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_precise_bn_first_layer_gets_exact_population_statistics():
    model = bn_model()
    x, _ = data()
    precise = precise_bn(model, x, batch_size=8, num_samples=10_000, gen=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = model[0](x).double()
    torch.testing.assert_close(precise[1].running_mean.double(), h.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(precise[1].running_var.double(), h.var(0, unbiased=True), rtol=1e-5, atol=1e-6)


def test_precise_bn_first_layer_does_not_depend_on_the_batch_split():
    model = bn_model()
    x, _ = data()
    a = precise_bn(model, x, 6, 10_000, torch.Generator().manual_seed(0))
    b = precise_bn(model, x, 20, 10_000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a[1].running_mean, b[1].running_mean)
    torch.testing.assert_close(a[1].running_var, b[1].running_var)


def test_evaluations_leave_the_model_untouched():
    model = bn_model().train()
    x, y = data()
    before = state(model)
    precise = precise_bn(model, x, 8, 100, torch.Generator().manual_seed(0))
    minibatch_error(model, x, y, 8, torch.arange(len(x)))
    error_and_loss(model, x, y)
    stats_distance(model, precise)
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before) and model.training


def test_minibatch_error_uses_batch_statistics_of_each_batch():
    model = bn_model()
    x, y = data(10)
    order = torch.tensor([3, 1, 4, 0, 5, 9, 2, 6, 8, 7])
    expected = 0
    for idx in (order[:4], order[4:8], order[8:]):
        twin = copy.deepcopy(model).train()
        expected += int((twin(x[idx]).argmax(1) != y[idx]).sum())
    assert minibatch_error(model, x, y, 4, order) == expected / 10
    # a lone trailing sample joins the previous batch (batch statistics need two samples)
    assert 0 <= minibatch_error(model, x, y, 3, order) <= 1


def test_stats_distance_is_zero_against_itself_and_relative():
    model = bn_model()
    assert stats_distance(model, model) == {"running_mean_rel_l2": 0.0, "running_var_rel_l2": 0.0}
    other = copy.deepcopy(model)
    with torch.no_grad():
        for m in (other[1], other[4]):
            m.running_var.mul_(2)
    assert stats_distance(model, other)["running_var_rel_l2"] == pytest.approx(0.5)


def test_run_records_stability_metrics_for_batch_dependent_norms_only(tmp_path):
    bn = execute(compose_cfg("norm=batchnorm", "batch_size=4", *QUICK), tmp_path / "bn")["metrics"]
    for key in (
        "test_error_precise_bn",
        "train_error_precise_bn",
        "test_error_minibatch",
        "train_error_minibatch",
        "test_error_minibatch_sorted",
        "running_mean_rel_l2",
        "running_var_rel_l2",
    ):
        assert key in bn
    assert bn["generalization_gap"] == pytest.approx(bn["test_error"] - bn["train_error"])
    assert bn["diverged"] is (min(v for k, v in bn.items() if k.startswith("train_error")) >= 0.85)
    gn = execute(compose_cfg("norm=groupnorm", "batch_size=4", *QUICK), tmp_path / "gn")["metrics"]
    assert "test_error_precise_bn" not in gn and "test_error_minibatch" not in gn
    ghost = execute(
        compose_cfg("norm=ghost_batchnorm", "norm.ghost_batch_size=2", "batch_size=8", *QUICK),
        tmp_path / "g",
    )["metrics"]
    assert "test_error_precise_bn" in ghost


def test_class_grouped_sampler_batches(tmp_path):
    from normbench.samplers import class_grouped_batches

    labels = torch.arange(10).repeat_interleave(20)
    it = class_grouped_batches(labels, 8, 2, torch.Generator().manual_seed(0))
    seen = [next(it) for _ in range(40)]
    for idx in seen:
        classes, counts = labels[idx].unique(return_counts=True)
        assert len(classes) == 2 and counts.tolist() == [4, 4]
    one_epoch = torch.cat(seen[:25])  # 10 classes x 5 chunks of 4, two chunks a batch
    assert len(one_epoch.unique()) == len(one_epoch)  # no sample twice within an epoch
    record = execute(
        compose_cfg("data.sampler=class_grouped", "data.classes_per_batch=2", "batch_size=8", *QUICK),
        tmp_path,
    )
    assert record["status"] == "completed"


def test_precise_bn_of_a_per_position_batchnorm_pools_each_position_over_the_samples():
    from normbench.evaluate import pooled_statistics

    torch.manual_seed(0)
    x = torch.randn(12, 2, 5) * 3 + 1
    model = nn.Sequential(build_norm("batchnorm", 2, positions=5))
    twin = pooled_statistics(model, x.split(4))
    torch.testing.assert_close(twin[0].running_mean, x.mean(0).flatten())
    torch.testing.assert_close(twin[0].running_var, x.var(0, unbiased=True).flatten())
