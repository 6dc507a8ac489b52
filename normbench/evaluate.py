"""Evaluations of a trained model. None of them changes the model (weights, buffers or mode)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import Tensor, nn

from normbench.norms import plugin_classes
from normbench.tasks.classification import LOGITS
from normbench.tasks.registry import Task


@contextmanager
def eval_mode(model: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """``model`` in eval mode (or, with ``training``, training mode) for the block, every submodule's
    train/eval mode restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield model.train(training)
    finally:
        for m, mode in modes.items():
            m.training = mode


@torch.no_grad()
def error_and_loss(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000, task: Task = LOGITS
) -> tuple[float, float]:
    """The mean error and loss of ``task`` (default: class logits, so the classification error and
    cross-entropy) over ``x``, ``y`` in eval mode (running statistics)."""
    with eval_mode(model):
        wrong, loss = 0.0, 0.0
        for start in range(0, len(x), batch_size):
            inputs, target = x[start : start + batch_size], y[start : start + batch_size]
            outputs = model(inputs)
            wrong += float(task.sample_errors(outputs, inputs, target).double().sum())
            loss += float(task.sample_losses(outputs, inputs, target).double().sum())
    return wrong / len(x), loss / len(x)


def _has_tensor(module: nn.Module, name: str) -> bool:
    return isinstance(getattr(module, name, None), Tensor)


def stat_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that keep population statistics: plugins the registry flags ``running_stats`` (and
    torch's own BatchNorm) that hold a ``running_var`` buffer — with ``running_mean`` where the plugin
    has one (EvoNorm-B0 keeps only the variance)."""
    kinds = (
        *(cls for cls, s in plugin_classes().items() if s.running_stats),
        nn.modules.batchnorm._BatchNorm,
    )
    return {
        name: m for name, m in model.named_modules() if isinstance(m, kinds) and _has_tensor(m, "running_var")
    }


def minibatches(order: Tensor, batch_size: int) -> list[Tensor]:
    """``order`` (its last dimension) cut into batches of ``batch_size``, the last possibly smaller
    but never a lone sample (batch statistics need two): it then joins the batch before."""
    batches = list(order.split(batch_size, dim=-1))
    if len(batches) > 1 and batches[-1].shape[-1] == 1 < batch_size:
        batches[-2:] = [torch.cat(batches[-2:], dim=-1)]
    return batches


@torch.no_grad()
def minibatch_error(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int, order: Tensor, task: Task = LOGITS
) -> float:
    """``task``'s mean error with mini-batch statistics: a training-mode forward over the batches
    ``order`` cuts into (:func:`minibatches`), on a copy so no running statistic moves."""
    twin = copy.deepcopy(model).train()
    wrong = 0.0
    for idx in minibatches(order, batch_size):
        wrong += float(task.sample_errors(twin(x[idx]), x[idx], y[idx]).double().sum())
    return wrong / len(order)


def precise_bn_order(num_train: int, num_samples: int, gen: torch.Generator) -> Tensor:
    """The training samples PreciseBN pools, in the order its batches take them."""
    return torch.randperm(num_train, generator=gen)[: min(num_samples, num_train)]


def channel_sums(x: Tensor, module: nn.Module | None = None) -> tuple[Tensor, Tensor, int]:
    """Per-channel sum and sum of squares (float64) of a norm's input (N, C, ...), and its count; per
    channel and position where ``module`` keeps its statistics so (BatchNorm with ``positions``)."""
    x = x.detach()
    if getattr(module, "positions", 0):
        v = x.reshape(len(x), -1).T.double()
    else:
        v = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    return v.sum(1), (v * v).sum(1), v.shape[1]


def pooled_stats(n: int, total: Tensor, total_sq: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased variance (as torch stores running_var) of ``n`` values from their sums."""
    mean = total / n
    return mean, (total_sq / n - mean * mean).clamp_min(0) * n / max(1, n - 1)


@torch.no_grad()
def precise_bn(
    model: nn.Module, x: Tensor, batch_size: int, num_samples: int, gen: torch.Generator
) -> nn.Module:
    """A copy of ``model`` whose running statistics are the population statistics of each layer's
    input, re-estimated with frozen weights (PreciseBN; Wu & Johnson 2021, fvcore ``update_bn_stats``).

    The forward passes run in training mode at ``batch_size``, as in training; every layer's mean and
    variance are pooled exactly over ``num_samples`` training samples (law of total variance; the
    variance stored unbiased like torch's), not averaged batch by batch.
    """
    order = precise_bn_order(len(x), num_samples, gen).split(batch_size)
    return pooled_statistics(model, (x[idx] for idx in order if len(idx) > 1 or batch_size == 1))


@torch.no_grad()
def pooled_statistics(model: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """A copy of ``model`` (in eval mode) whose layers' running statistics are their inputs' mean and
    unbiased variance pooled exactly over training-mode forwards of ``batches``."""
    twin = copy.deepcopy(model).train()
    layers = stat_modules(twin)
    sums: dict[str, list] = {}

    def hook(name: str):
        def accumulate(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            total, total_sq, n = channel_sums(inputs[0], module)
            acc = sums.setdefault(name, [0, 0.0, 0.0])
            acc[0] += n
            acc[1] = acc[1] + total
            acc[2] = acc[2] + total_sq

        return accumulate

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    try:
        for batch in batches:
            twin(batch)
    finally:
        for h in handles:
            h.remove()
    for name, m in layers.items():
        mean, var = pooled_stats(*sums[name])
        if _has_tensor(m, "running_mean"):
            m.running_mean.copy_(mean)
        m.running_var.copy_(var)
    return twin.eval()


def relative_l2(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def stats_distance(model: nn.Module, reference: nn.Module) -> dict[str, float]:
    """Relative L2 distance of ``model``'s running means and variances to ``reference``'s (the
    PreciseBN estimate), averaged over layers."""
    ours, theirs = stat_modules(model), stat_modules(reference)
    pairs = {
        (name, stat): (getattr(m, stat), getattr(theirs[name], stat))
        for name, m in ours.items()
        for stat in ("running_mean", "running_var")
        if _has_tensor(m, stat)
    }
    return mean_distances(pairs)


def mean_distances(pairs: dict[tuple[str, str], tuple[Tensor, Tensor]]) -> dict[str, float]:
    """``{stat}_rel_l2``: the relative L2 distance of each (layer, stat) pair, averaged over layers."""
    distances: dict[str, float] = {}
    for stat in ("running_mean", "running_var"):
        values = [relative_l2(a, b) for (_, s), (a, b) in pairs.items() if s == stat]
        if values:
            distances[f"{stat}_rel_l2"] = sum(values) / len(values)
    return distances


class Members(Protocol):
    """K trained models evaluated together: what :func:`normbench.experiment.record.final_metrics` needs. Each
    method returns one value per member; :class:`OneModel` is K = 1, :class:`OneByOne` K models in turn,
    a population (:class:`normbench.population.evaluate.PopulationMembers`) evaluates its members
    vectorized."""

    size: int
    task: Task

    def error_and_loss(self, x: Tensor, y: Tensor) -> list[tuple[float, float]]: ...

    def minibatch_error(
        self, x: Tensor, y: Tensor, batch_size: int, orders: Sequence[Tensor]
    ) -> list[float]: ...

    def has_stat_modules(self) -> bool: ...

    def precise_bn(
        self, x: Tensor, batch_size: int, num_samples: int, gens: Sequence[torch.Generator]
    ) -> Members: ...

    def stats_distance(self, reference: Members) -> list[dict[str, float]]: ...


class OneModel:
    """One model of ``task`` as :class:`Members` (K = 1), through the functions above."""

    size = 1

    def __init__(self, model: nn.Module, task: Task = LOGITS) -> None:
        self.model, self.task = model, task

    def error_and_loss(self, x: Tensor, y: Tensor) -> list[tuple[float, float]]:
        return [error_and_loss(self.model, x, y, task=self.task)]

    def minibatch_error(self, x: Tensor, y: Tensor, batch_size: int, orders: Sequence[Tensor]) -> list[float]:
        return [minibatch_error(self.model, x, y, batch_size, orders[0], self.task)]

    def has_stat_modules(self) -> bool:
        return bool(stat_modules(self.model))

    def precise_bn(
        self, x: Tensor, batch_size: int, num_samples: int, gens: Sequence[torch.Generator]
    ) -> OneModel:
        return OneModel(precise_bn(self.model, x, batch_size, num_samples, gens[0]), self.task)

    def stats_distance(self, reference: OneModel) -> list[dict[str, float]]:  # type: ignore[override]
        return [stats_distance(self.model, reference.model)]


class OneByOne:
    """K models of ``task`` as :class:`Members`, each evaluated in turn by the single run's own functions
    (as :class:`OneModel`). A population's members on the CPU: there one model after another is faster
    than the vectorized population, whose K-wide activations fall out of the caches
    (``scripts/bench_population_eval.py``)."""

    def __init__(self, models: Sequence[nn.Module], task: Task = LOGITS) -> None:
        self.models, self.task = list(models), task
        self.size = len(self.models)

    def error_and_loss(self, x: Tensor, y: Tensor) -> list[tuple[float, float]]:
        return [error_and_loss(m, x, y, task=self.task) for m in self.models]

    def minibatch_error(self, x: Tensor, y: Tensor, batch_size: int, orders: Sequence[Tensor]) -> list[float]:
        return [
            minibatch_error(m, x, y, batch_size, order, self.task)
            for m, order in zip(self.models, orders, strict=True)
        ]

    def has_stat_modules(self) -> bool:
        return bool(stat_modules(self.models[0]))

    def precise_bn(
        self, x: Tensor, batch_size: int, num_samples: int, gens: Sequence[torch.Generator]
    ) -> OneByOne:
        return OneByOne(
            [
                precise_bn(m, x, batch_size, num_samples, gen)
                for m, gen in zip(self.models, gens, strict=True)
            ],
            self.task,
        )

    def stats_distance(self, reference: OneByOne) -> list[dict[str, float]]:  # type: ignore[override]
        return [stats_distance(m, r) for m, r in zip(self.models, reference.models, strict=True)]
