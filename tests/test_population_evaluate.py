"""A population's members are evaluated in one of two ways, and both give the same numbers: all at
once (PopulationMembers, vectorized: what a GPU uses) and one model after another (OneByOne, the
single run's own functions: what the CPU uses where it is faster); the CPU's MembersByBatchSize
mixes them by batch size."""

from __future__ import annotations

import math

import pytest
from helpers import compose_cfg

from normbench.evaluate import OneByOne
from normbench.experiment.build import prepare_data, prepare_model, setup_runtime
from normbench.experiment.record import members_final_metrics
from normbench.population import evaluate as population_evaluate
from normbench.population.evaluate import MembersByBatchSize, PopulationMembers
from normbench.population.train import fit_population, population_members
from normbench.population.wide import stack_population
from normbench.tasks.registry import task_for

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
COMMON = ("norm=batchnorm", "batch_size=16", "train.budget=steps", "train.steps=40", "train.history_points=2")
EVAL = ("eval.precise_bn_samples=512", "eval.minibatch_samples=256")


@pytest.mark.parametrize(
    ("task", "form"),
    [("mnist1d_cnn", "wide"), ("mnist1d_cnn", "vmap"), ("mnist1d_mlp", "wide"), ("digits_lstm", "wide")],
)
def test_vectorized_and_one_by_one_evaluations_give_every_final_metric_alike(task, form):
    cfgs = [
        compose_cfg(f"task={task}", *COMMON, *EVAL, f"seed={s}", f"optim.lr={lr}")
        for s, lr in enumerate((0.02, 0.05, 0.1))
    ]
    runtime = setup_runtime(cfgs[0])
    data = prepare_data(cfgs[0], runtime)
    models = [prepare_model(cfg, data, runtime) for cfg in cfgs]
    fit_population(cfgs, models, data, runtime, form=form)  # running statistics away from their start
    together = members_final_metrics(
        PopulationMembers(stack_population(models, form), task_for(cfgs[0])), data, cfgs
    )
    each = members_final_metrics(OneByOne(models, task_for(cfgs[0])), data, cfgs)
    assert "test_error_precise_bn" in each[0] and "test_error_minibatch_sorted" in each[0]
    assert len({m["test_loss"] for m in each}) == 3  # three different members, in their order
    for a, b in zip(together, each, strict=True):
        assert a.keys() == b.keys()
        for key, value in b.items():
            assert math.isclose(a[key], value, rel_tol=1e-5, abs_tol=1e-6), (key, a[key], value)


def test_the_cpu_evaluates_a_training_population_one_model_at_a_time_from_its_current_state():
    cfgs = [compose_cfg("task=mnist1d_mlp", *COMMON, f"seed={s}") for s in range(2)]
    runtime = setup_runtime(cfgs[0])
    data = prepare_data(cfgs[0], runtime)
    models = [prepare_model(cfg, data, runtime) for cfg in cfgs]
    pop = stack_population(models, "wide")
    for tensor in pop.params.values():  # the population moves on; its models stay where they were built
        tensor.data.mul_(0.5)
    task = task_for(cfgs[0])
    members = population_members(models, task, runtime.device, pop)
    assert isinstance(members, MembersByBatchSize)
    each = members.error_and_loss(data.x_test, data.y_test)
    together = PopulationMembers(pop, task).error_and_loss(data.x_test, data.y_test)
    for (error_a, loss_a), (error_b, loss_b) in zip(each, together, strict=True):
        assert math.isclose(loss_a, loss_b, rel_tol=1e-5) and abs(error_a - error_b) <= 1 / len(data.x_test)


@pytest.mark.parametrize(
    ("batch_size", "members", "vectorized"), [(4, 3, True), (64, 3, False), (4, 2, False)]
)
def test_the_cpu_vectorizes_the_passes_of_many_members_at_small_batches_alone_with_the_same_numbers(
    batch_size, members, vectorized, monkeypatch
):
    """MembersByBatchSize: with enough members at a small batch size the mini-batch errors and
    PreciseBN's statistics run on the population, otherwise one model after another; every final metric
    as OneByOne gives it. (Three members count as many here, to keep the test small.)"""
    monkeypatch.setattr(population_evaluate, "VECTORIZED_MEMBERS", 3)
    cfgs = [
        compose_cfg("task=mnist1d_cnn", *COMMON, *EVAL, f"batch_size={batch_size}", f"seed={s}")
        for s in range(members)
    ]
    runtime = setup_runtime(cfgs[0])
    data = prepare_data(cfgs[0], runtime)
    models = [prepare_model(cfg, data, runtime) for cfg in cfgs]
    fit_population(cfgs, models, data, runtime)
    task = task_for(cfgs[0])
    mixed = population_members(models, task, runtime.device)
    metrics = members_final_metrics(mixed, data, cfgs)
    assert (mixed._pop is not None) is vectorized  # stacked for the vectorized passes alone
    each = members_final_metrics(OneByOne(models, task), data, cfgs)
    for a, b in zip(metrics, each, strict=True):
        assert a.keys() == b.keys() and "test_error_precise_bn" in a and "running_mean_rel_l2" in a
        for key, value in b.items():
            assert math.isclose(a[key], value, rel_tol=1e-5, abs_tol=1e-6), (key, a[key], value)
