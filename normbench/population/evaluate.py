"""A population's final evaluations, vectorized: :class:`PopulationMembers` is the
:class:`normbench.evaluate.Members` that :func:`normbench.experiment.record.members_final_metrics` evaluates, with
every member's forward passes in one ``vmap``. It follows the single-model functions of
:mod:`normbench.evaluate` step for step (same chunks, batches, sample orders and pooling helpers), so
each member gets its separate run's numbers up to float reassociation. :class:`MembersByBatchSize`
(the CPU's) evaluates one model after another except where the batches are small."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from normbench.evaluate import (
    OneByOne,
    eval_mode,
    mean_distances,
    minibatches,
    pooled_stats,
    precise_bn_order,
    stat_modules,
)
from normbench.population.stacked import Population
from normbench.population.wide import stack_population
from normbench.tasks.classification import LOGITS
from normbench.tasks.registry import Task


class PopulationMembers:
    """The members of ``pop`` as :class:`normbench.evaluate.Members`."""

    def __init__(self, pop: Population, task: Task = LOGITS) -> None:
        self.pop, self.task = pop, task
        self.size = pop.size

    def _per_member(self, measure, outputs: Tensor, inputs: Tensor, target: Tensor) -> Tensor:
        """``measure`` (the task's sample errors or losses) of every member's ``outputs`` (K, N, ...)
        for ``inputs`` and ``target`` (K, N, ...), summed over each member's samples (K,)."""
        each = measure(outputs.flatten(0, 1), inputs.flatten(0, 1), target.flatten(0, 1))
        return each.view(outputs.shape[:2]).double().sum(1)

    @torch.no_grad()
    def error_and_loss(self, x: Tensor, y: Tensor, batch_size: int = 1000) -> list[tuple[float, float]]:
        """As :func:`normbench.evaluate.error_and_loss`, for every member."""
        wrong = torch.zeros(self.size, dtype=torch.float64, device=x.device)
        losses = torch.zeros(self.size, dtype=torch.float64, device=x.device)
        k = self.size
        with eval_mode(self.pop.base):
            for start in range(0, len(x), batch_size):
                inputs, target = x[start : start + batch_size], y[start : start + batch_size]
                outputs = self.pop.forward(inputs, shared_input=True)
                inputs, target = inputs.expand(k, *inputs.shape), target.expand(k, *target.shape)
                wrong += self._per_member(self.task.sample_errors, outputs, inputs, target)
                losses += self._per_member(self.task.sample_losses, outputs, inputs, target)
        return [(w / len(x), loss / len(x)) for w, loss in zip(wrong.tolist(), losses.tolist(), strict=True)]

    @torch.no_grad()
    def minibatch_error(self, x: Tensor, y: Tensor, batch_size: int, orders: Sequence[Tensor]) -> list[float]:
        """As :func:`normbench.evaluate.minibatch_error`: training-mode forwards over each member's own
        order, on copies of the buffers."""
        buffers = {name: b.clone() for name, b in self.pop.buffers.items()}
        wrong = torch.zeros(self.size, dtype=torch.float64, device=x.device)
        stacked = torch.stack(list(orders)).to(x.device)
        with eval_mode(self.pop.base, training=True):
            for idx in minibatches(stacked, batch_size):
                outputs = self.pop.forward(x[idx], buffers=buffers)
                wrong += self._per_member(self.task.sample_errors, outputs, x[idx], y[idx])
        return [w / stacked.shape[1] for w in wrong.tolist()]

    def has_stat_modules(self) -> bool:
        return bool(stat_modules(self.pop.base))

    @torch.no_grad()
    def precise_bn(
        self, x: Tensor, batch_size: int, num_samples: int, gens: Sequence[torch.Generator]
    ) -> PopulationMembers:
        """As :func:`normbench.evaluate.precise_bn`: a population whose running statistics are each
        member's pooled input statistics over its own sample order (the other buffers as the
        training-mode forwards of that pass leave them)."""
        layers = stat_modules(self.pop.base)
        counts = dict.fromkeys(layers, 0)
        buffers = {name: b.clone() for name, b in self.pop.buffers.items()}
        order = torch.stack([precise_bn_order(len(x), num_samples, g) for g in gens]).to(x.device)
        totals: dict[str, Tensor] = {}
        with eval_mode(self.pop.base, training=True):
            for idx in order.split(batch_size, dim=1):
                if idx.shape[1] > 1 or batch_size == 1:
                    sums, batch_counts = self.pop.layer_sums(x[idx], list(layers), buffers)
                    for name, value in sums.items():
                        totals[name] = totals[name] + value if name in totals else value
                        counts[name] += batch_counts[name]
        for name in layers:
            mean, var = pooled_stats(counts[name], totals[name][:, 0], totals[name][:, 1])
            if f"{name}.running_mean" in buffers:
                buffers[f"{name}.running_mean"].copy_(mean)
            buffers[f"{name}.running_var"].copy_(var)
        return PopulationMembers(self.pop.with_buffers(buffers), self.task)

    def stats_distance(self, reference: PopulationMembers) -> list[dict[str, float]]:  # type: ignore[override]
        keys = [
            (name, stat)
            for name in stat_modules(self.pop.base)
            for stat in ("running_mean", "running_var")
            if f"{name}.{stat}" in self.pop.buffers
        ]
        ours, theirs = self.pop.buffers, reference.pop.buffers
        return [
            mean_distances({(n, s): (ours[f"{n}.{s}"][k], theirs[f"{n}.{s}"][k]) for n, s in keys})
            for k in range(self.size)
        ]


# On the CPU the training-mode passes at the run's batch size (mini-batch errors, PreciseBN's
# statistics) run on the population for at least VECTORIZED_MEMBERS members at batch sizes up to
# VECTORIZED_BATCH: there a pass costs per-forward overhead, which the members share (16 members:
# 1.3-3.7x faster at batch 2-32); with fewer members, or larger batches, K-wide activations leave the
# caches and one model after another is faster, as for the full-batch evaluations
# (scripts/bench_population_eval.py, reports/bench/population_eval.md: the MLP with 4 members 0.83-0.99x).
VECTORIZED_BATCH = 32
VECTORIZED_MEMBERS = 8


class MembersByBatchSize:
    """``models`` (a population's members, as ``pop`` holds them when given) as
    :class:`normbench.evaluate.Members` on the CPU: each evaluation one model after another
    (:class:`normbench.evaluate.OneByOne`), except the training-mode passes of at least
    :data:`VECTORIZED_MEMBERS` members at batch sizes up to :data:`VECTORIZED_BATCH`, which run on the
    population (:class:`PopulationMembers`; ``models`` stacked in ``form`` when no ``pop`` is given)."""

    def __init__(
        self, models: Sequence[nn.Module], task: Task, form: str = "auto", pop: Population | None = None
    ) -> None:
        self.one_by_one = OneByOne(models, task)
        self.models, self.task, self.size, self.form, self._pop = list(models), task, len(models), form, pop

    def _vectorizes(self, batch_size: int) -> bool:
        return batch_size <= VECTORIZED_BATCH and self.size >= VECTORIZED_MEMBERS

    def _vectorized(self) -> PopulationMembers:
        if self._pop is None:
            self._pop = stack_population(self.models, self.form)
        return PopulationMembers(self._pop, self.task)

    def error_and_loss(self, x: Tensor, y: Tensor) -> list[tuple[float, float]]:
        return self.one_by_one.error_and_loss(x, y)

    def minibatch_error(self, x: Tensor, y: Tensor, batch_size: int, orders: Sequence[Tensor]) -> list[float]:
        members = self._vectorized() if self._vectorizes(batch_size) else self.one_by_one
        return members.minibatch_error(x, y, batch_size, orders)

    def has_stat_modules(self) -> bool:
        return self.one_by_one.has_stat_modules()

    def precise_bn(
        self, x: Tensor, batch_size: int, num_samples: int, gens: Sequence[torch.Generator]
    ) -> MembersByBatchSize:
        if not self._vectorizes(batch_size):
            precise = self.one_by_one.precise_bn(x, batch_size, num_samples, gens)
            return MembersByBatchSize(precise.models, self.task, self.form)
        pop = self._vectorized().precise_bn(x, batch_size, num_samples, gens).pop
        models = [copy.deepcopy(m) for m in self.models]
        pop.unstack_into(models)
        return MembersByBatchSize(models, self.task, self.form, pop)

    def stats_distance(self, reference: MembersByBatchSize) -> list[dict[str, float]]:  # type: ignore[override]
        return self.one_by_one.stats_distance(reference.one_by_one)
