"""Population training: the members of a group (:mod:`normbench.population.grouping`) trained as one
vectorized model, each with the result its separate run would give.

Every member is built exactly as its run builds its model (same seed, same CPU initialization); the
members' parameters and buffers are then stacked (``torch.func.stack_module_state``) and one
``vmap``-ed ``functional_call`` computes every member's loss on its own batch. Each member draws its
batches from its own sampler stream (seeded by its seed, as the separate run), scales the shared
learning-rate schedule by its own peak, and steps with its own optimizer hyper-parameters
(:class:`~normbench.population.optim.PopulationOptimizer`).

A member whose loss turns non-finite is frozen at that step — its parameters, optimizer state and
buffers stop changing — and recorded ``diverged`` there, while the others go on. The history's test and
validation errors and the final evaluations (:func:`normbench.experiment.record.members_final_metrics`: errors,
mini-batch statistics, PreciseBN) are evaluated for all members at once
(:class:`~normbench.population.evaluate.PopulationMembers`); only the layers' own metrics are read
from each member's module.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm import tqdm

from normbench.capture import capture_step, training_stream
from normbench.checkpoint import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    Checkpoint,
    random_state,
    restore_random_state,
    save_weights,
)
from normbench.config import ConfigError
from normbench.evaluate import Members
from normbench.experiment.build import (
    augmentation,
    batch_iterator,
    epoch_iterator,
    hooked_forward,
    prepare_data,
    prepare_model,
    setup_runtime,
)
from normbench.experiment.identity import run_identity
from normbench.experiment.record import (
    members_final_metrics,
    new_record,
    record_metrics,
    record_plan,
    record_training,
    seal,
)
from normbench.norms import plugin_classes
from normbench.population.evaluate import MembersByBatchSize, PopulationMembers
from normbench.population.grouping import why_not_population
from normbench.population.optim import PopulationOptimizer
from normbench.population.stacked import Population
from normbench.population.wide import NoWideForm, stack_population
from normbench.runtime import Runtime
from normbench.tasks.dataset import Dataset
from normbench.tasks.registry import Task, task_for
from normbench.train import FitResult, lr_schedule, training_plan

log = logging.getLogger(__name__)


def member_batches(cfgs: Sequence[DictConfig], data: Dataset, device: torch.device) -> Iterator[Tensor]:
    """Every member's next batch indices as one (K, B) tensor per step, on ``device``, each member's from
    its own sampler stream (seeded by its seed, as its separate run's). Where every member's sampler
    draws whole epochs (:func:`~normbench.experiment.build.epoch_iterator`), the K epochs are stacked
    and copied at once, so that the host's work per step does not grow with K
    (:func:`stepwise_batches` took 0.75-2.15 ms per step at K=512 on this repository's machine, 6-72x
    as long: reports/bench/population_host.md); other samplers' come step by step."""
    epochs = [epoch_iterator(cfg, data, torch.Generator().manual_seed(cfg.seed)) for cfg in cfgs]
    if any(e is None for e in epochs):
        return stepwise_batches(cfgs, data, device)
    return _stacked_epochs(epochs, device)


def _stacked_epochs(epochs: Sequence[Iterator[Tensor]], device: torch.device) -> Iterator[Tensor]:
    while True:  # (epoch's batches, K, B) on the device; each step a view of it
        yield from torch.stack([next(e) for e in epochs], dim=1).to(device)


def stepwise_batches(
    cfgs: Sequence[DictConfig], data: Dataset, device: torch.device, chunk: int | None = None
) -> Iterator[Tensor]:
    """:func:`member_batches` of any sampler: each member's next batch drawn step by step, ``chunk``
    steps per host-to-device copy (default: 256 on a GPU, 1 on the CPU)."""
    streams = [batch_iterator(cfg, data, torch.Generator().manual_seed(cfg.seed)) for cfg in cfgs]
    chunk = chunk or (1 if device.type == "cpu" else 256)
    while True:
        drawn = torch.stack([torch.stack([next(s) for s in streams]) for _ in range(chunk)])
        yield from drawn.to(device)


def fit_population(
    cfgs: Sequence[DictConfig],
    models: Sequence[nn.Module],
    data: Dataset,
    runtime: Runtime,
    progress: bool = False,
    form: str = "auto",
    checkpoints: Sequence[Checkpoint] | None = None,
) -> list[FitResult]:
    """Train ``models`` (one per config of a group, built by :func:`normbench.experiment.build.prepare_model`) as
    one population (``form``: see :func:`~normbench.population.wide.stack_population`), leave each
    trained model's parameters and buffers in it, and return each member's
    :class:`~normbench.train.FitResult` as its separate :func:`normbench.train.fit` would, with the
    population's form. ``checkpoints`` (one per member, in order): every member's share of the
    training state is saved to its own every ``checkpoint.every`` steps, and a group whose members all
    hold a checkpoint of the same step and group resumes from it (:mod:`normbench.checkpoint`)."""
    captured = captures(runtime, cfgs[0])
    with training_stream(data.x_train.device, captured):
        return _fit_population(cfgs, models, data, runtime, progress, form, captured, checkpoints)


def _fit_population(
    cfgs: Sequence[DictConfig],
    models: Sequence[nn.Module],
    data: Dataset,
    runtime: Runtime,
    progress: bool,
    form: str,
    captured: bool,
    checkpoints: Sequence[Checkpoint] | None = None,
) -> list[FitResult]:
    plans = [training_plan(cfg, len(data.x_train)) for cfg in cfgs]
    total, eval_every, per_epoch = plans[0].total, plans[0].eval_every, plans[0].steps_per_epoch
    device = data.x_train.device
    pop = stack_population(models, form)
    log.info("population of %d members: %s form", pop.size, pop.form)
    k = pop.size
    first = cfgs[0]
    task = task_for(first)
    x, y = data.x_train, data.y_train
    probe = torch.arange(k * first.batch_size, device=device).view(k, -1) % len(x)
    with runtime.autocast():  # on copies of the buffers: the probe leaves no trace
        loss = pop.with_buffers({n: b.clone() for n, b in pop.buffers.items()}).losses(
            x[probe], y[probe], task
        )
    pop.match_gradient_layout(torch.autograd.grad(loss.sum(), pop.leaves))
    pop.pack_parameters()
    lrs = lr_table([p.lr for p in plans], total, first.optim.schedule, first.optim.warmup_steps, device)
    optimizer = PopulationOptimizer.for_members(cfgs, list(pop.params.values()))
    batches = member_batches(cfgs, data, device)
    transforms = [augmentation(cfg, device) for cfg in cfgs]
    alive = torch.ones(k, dtype=torch.bool, device=device)
    diverged_at = torch.full((k,), -1, dtype=torch.long, device=device)
    loss_sum = torch.zeros(k, device=device)
    # what a step reads: copied in before each step, so that a captured step finds them in place
    idx_now = torch.zeros(k, first.batch_size, dtype=torch.long, device=device)
    lr_now = torch.zeros(k, dtype=torch.float64, device=device)
    step_now = torch.zeros((), dtype=torch.long, device=device)
    since = 0
    histories: list[list[dict]] = [[] for _ in range(k)]
    leaves = pop.leaves
    # members frozen at divergence keep their buffers. A wide population shares 0-dim buffers (step
    # counters: one view with stride 0), which go on counting; each member's value is held apart.
    shared = {n: b for n, b in pop.buffers.items() if b.dim() == 1 and b.stride(0) == 0}
    own_buffers = {n: b for n, b in pop.buffers.items() if n not in shared}
    held = {n: b.clone() for n, b in shared.items()}
    gens = [t.keywords["gen"] if t is not None else None for t in transforms]
    loop = _LoopState(pop, optimizer, alive, diverged_at, loss_sum, held, histories, gens)
    group = "|".join(c.config_hash for c in checkpoints) if checkpoints else ""
    first = 0
    saved = [c.load(holds="group") for c in checkpoints] if checkpoints else []
    if (
        saved
        and all(m is not None and m["group"] == group for m in saved)
        and len({m["step"] for m in saved}) == 1
    ):
        first, since = saved[0]["step"], saved[0]["since"]
        loop.restore(saved)
        step_now.fill_(first)
        for _ in range(first):  # each sampler's stream is its seed's: replay its draws
            next(batches)
        log.info("population resumed from its members' checkpoints at step %d of %d", first, total)
    elif any(m is not None for m in saved):
        log.warning("the members' checkpoints are not of this group at one step; training from step 0")
    # on the CPU the host knows for free whether every member is alive; a GPU is not waited for
    all_alive = device.type == "cpu" and bool(alive.all())

    def train_step() -> None:
        """One step of every member, in place (capturable: no host synchronisation on a GPU)."""
        nonlocal all_alive
        inputs = x[idx_now]
        if transforms[0] is not None:  # each member's augmentation from its own stream
            inputs = torch.stack([t(member_x) for t, member_x in zip(transforms, inputs, strict=True)])
        # members frozen before this step keep their buffers; none is, when the host knows all are alive
        before = None if all_alive else {name: b.clone() for name, b in own_buffers.items()}
        with runtime.autocast():
            losses = pop.losses(inputs, y[idx_now], task)
        grads = pop.member_grads(torch.autograd.grad(losses.sum(), leaves))
        finite = torch.isfinite(losses.detach())
        # each where writes in place: one kernel per tensor, which a captured step replays every step
        with torch.no_grad():
            if before is not None:
                frozen = ~alive
                for name, b in own_buffers.items():
                    torch.where(frozen.view(-1, *([1] * (b.dim() - 1))), before[name], b, out=b)
            torch.where(alive & ~finite, step_now, diverged_at, out=diverged_at)
            for name, b in shared.items():  # a member's value after its last forward
                torch.where(alive, b, held[name], out=held[name])
            alive.logical_and_(finite)
            all_alive = device.type == "cpu" and bool(alive.all())
            optimizer.step(grads, lr_now, alive, all_alive)
            loss_sum.add_(torch.where(alive, losses.detach(), 0.0))
            step_now.add_(1)

    run_step = train_step
    bar = tqdm(total=total, initial=first, unit="step", disable=not progress, file=sys.stderr, leave=False)
    start = time.perf_counter()
    for step in range(first, total):
        idx_now.copy_(next(batches))
        lr_now.copy_(lrs[step])
        run_step()
        if captured and step == first:  # the first step made the optimizer's state; the rest replay
            state = [*pop.storage, *optimizer.tensors, alive, diverged_at, loss_sum, step_now, *held.values()]
            try:
                run_step = capture_step(train_step, state)
            except RuntimeError as exc:  # an operation that cannot be captured: eager, unless insisted on
                if runtime.cuda_graph:
                    raise
                log.warning("the training step could not be captured as a CUDA graph, runs eagerly: %s", exc)
                captured = False
        since += 1
        done = step + 1
        # every member frozen: the steps left would change nothing (read for free on the CPU; on a GPU
        # every Runtime.check_every steps, as a run's own loop reads its losses)
        if not all_alive and done % runtime.check_every == 0 and not bool(alive.any()):
            log.info("every member diverged by step %d of %d: the population stops", done, total)
            break
        if done % eval_every == 0 or done == total:
            _history_point(
                pop,
                models,
                task,
                data,
                runtime,
                histories,
                alive,
                [v / since for v in loss_sum.tolist()],
                done,
                per_epoch,
            )
            loss_sum.zero_()
            since = 0
            bar.set_postfix(alive=f"{int(alive.sum())}/{k}")
        if checkpoints and checkpoints[0].due(done, total):
            loop.save(
                checkpoints,
                {"step": done, "group": group, "since": since, "optimizer_steps": optimizer.steps},
            )
        bar.update()
    bar.close()
    elapsed = time.perf_counter() - start
    pop.buffers.update(held)
    pop.unstack_into(models)
    results = []
    for history, first_bad in zip(histories, diverged_at.tolist(), strict=True):
        if first_bad >= 0:
            results.append(FitResult("diverged", first_bad, first_bad, history, elapsed, pop.form, captured))
        else:
            results.append(FitResult("completed", total, None, history, elapsed, pop.form, captured))
    return results


@dataclass
class _LoopState:
    """What the population's training loop carries from step to step, and its members' checkpoints hold."""

    pop: Population
    optimizer: PopulationOptimizer
    alive: Tensor
    diverged_at: Tensor
    loss_sum: Tensor
    held: dict[str, Tensor]
    histories: list[list[dict]]
    gens: Sequence[torch.Generator | None]

    def save(self, checkpoints: Sequence[Checkpoint], common: dict[str, Any]) -> None:
        """Each member's share of the state, into its own checkpoint."""
        for i, checkpoint in enumerate(checkpoints):
            checkpoint.save(
                {
                    **common,
                    "params": {n: p[i].detach().clone() for n, p in self.pop.params.items()},
                    "buffers": {n: b[i].clone() for n, b in self.pop.buffers.items()},
                    "optimizer": [{key: t[i].clone() for key, t in s.items()} for s in self.optimizer.state],
                    "alive": self.alive[i].clone(),
                    "diverged_at": self.diverged_at[i].clone(),
                    "loss_sum": self.loss_sum[i].clone(),
                    "held": {n: h[i].clone() for n, h in self.held.items()},
                    "history": self.histories[i],
                    "random": random_state([g for g in (self.gens[i],) if g is not None]),
                }
            )

    @torch.no_grad()
    def restore(self, saved: Sequence[dict[str, Any]]) -> None:
        """The state from the members' checkpoints (:meth:`save`), in place."""
        device = self.alive.device

        def stacked(key: str, name: str | None = None) -> Tensor:
            return torch.stack([m[key] if name is None else m[key][name] for m in saved]).to(device)

        for name, p in self.pop.params.items():
            p.copy_(stacked("params", name))
        for name, b in self.pop.buffers.items():
            if b.dim() == 1 and b.stride(0) == 0:  # one counter the members share (a wide population's)
                b[0].copy_(saved[0]["buffers"][name])
            else:
                b.copy_(stacked("buffers", name))
        self.optimizer.steps = saved[0]["optimizer_steps"]
        self.optimizer.load_state(
            [
                {
                    key: torch.stack([m["optimizer"][j][key] for m in saved]).to(device)
                    for key in saved[0]["optimizer"][j]
                }
                for j in range(len(self.optimizer.params))
            ]
        )
        for name in ("alive", "diverged_at", "loss_sum"):
            getattr(self, name).copy_(stacked(name))
        for name, h in self.held.items():
            h.copy_(stacked("held", name))
        for history, member in zip(self.histories, saved, strict=True):
            history[:] = member["history"]
        restore_random_state(saved[0]["random"], [])
        for gen, member in zip(self.gens, saved, strict=True):
            if gen is not None:
                gen.set_state(member["random"]["own"][0])


def trains_captured_alone(cfg: DictConfig, runtime: Runtime, processes: int = 1) -> bool:
    """Whether the run ``cfg`` alone trains as a population of one, its step captured as a CUDA graph
    (:func:`normbench.experiment.run.execute`): on one CUDA process, for a run that a population can
    train (:func:`~normbench.population.grouping.why_not_population`), where :func:`captures` says so.
    ConfigError naming why for ``runtime.cuda_graph=true`` where it cannot."""
    if runtime.device.type != "cuda" or runtime.cuda_graph is False:
        return False  # true without CUDA is refused with the runtime (normbench.runtime)
    if processes > 1:
        why = f"torchrun's {processes} processes: each would replay a step without the others"
    else:
        why = _own_loop(cfg) or why_not_population(cfg)
    if why is not None:
        if runtime.cuda_graph:
            raise ConfigError(f"runtime.cuda_graph=true: {why}")
        return False
    return captures(runtime, cfg)


def _own_loop(cfg: DictConfig) -> str | None:
    """Why the run's step is not captured when its task trains in a loop of its own (the GANs)."""
    if task_for(cfg).own_training:
        return f"task={cfg.task.name} trains with a loop of its own, which is not captured"
    return None


def captures(runtime: Runtime, cfg: DictConfig) -> bool:
    """Whether the training step is captured as a CUDA graph (``runtime.cuda_graph``: ``None`` = where it
    can be); ConfigError for ``true`` where it cannot."""
    why = None
    augment = getattr(cfg.task.augment, "value", cfg.task.augment)
    if runtime.device.type != "cuda":
        why = f"needs a CUDA device (runtime.device={runtime.device})"
    elif augment != "none":
        why = f"task.augment={augment}: augmentation draws from host generators each step"
    if why is not None and runtime.cuda_graph:
        raise ConfigError(f"runtime.cuda_graph=true: {why}")
    return why is None and runtime.cuda_graph is not False


def lr_table(peaks: Sequence[float], total: int, schedule: str, warmup: int, device: torch.device) -> Tensor:
    """(total, K): each member's learning rate at every step, from the same function as a separate
    run (computed once per distinct peak)."""
    columns = {
        peak: [lr_schedule(peak, total, schedule, warmup)(t) for t in range(total)] for peak in set(peaks)
    }
    return torch.tensor([columns[p] for p in peaks], dtype=torch.float64, device=device).T.contiguous()


def population_members(
    models: Sequence[nn.Module],
    task: Task,
    device: torch.device,
    pop: Population | None = None,
    form: str = "auto",
) -> Members:
    """The members to evaluate on ``device``: ``models`` after training, or, with ``pop``, the
    population they train as. On the CPU each model in turn (``pop``'s state copied into them first),
    through the single run's own functions: there that is about twice as fast as the vectorized
    population, whose K-wide activations fall out of the caches (``scripts/bench_population_eval.py``,
    reports/bench/population_eval.md), except the training-mode passes at small batch sizes
    (:class:`~normbench.population.evaluate.MembersByBatchSize`). Elsewhere all members at once, as
    one population (``pop``, or ``models`` stacked in ``form``)."""
    if device.type == "cpu":
        if pop is not None:
            pop.unstack_into(models)
        return MembersByBatchSize(models, task, form, pop)
    return PopulationMembers(pop if pop is not None else stack_population(models, form), task)


def _history_point(
    pop: Population,
    models: Sequence[nn.Module],
    task: Task,
    data: Dataset,
    runtime: Runtime,
    histories: Sequence[list[dict]],
    alive: Tensor,
    mean_loss: Sequence[float],
    done: int,
    per_epoch: int,
) -> None:
    """Append a history point (as :func:`normbench.train.fit` writes it) to every member still alive."""
    evaluated = population_members(models, task, data.x_test.device, pop)
    with runtime.autocast():
        test = [error for error, _ in evaluated.error_and_loss(data.x_test, data.y_test)]
        val = None if data.x_val is None else [e for e, _ in evaluated.error_and_loss(data.x_val, data.y_val)]
    for i, (history, ok, loss) in enumerate(zip(histories, alive.tolist(), mean_loss, strict=True)):
        if not ok:
            continue
        point = {"step": done, "epoch": round(done / per_epoch, 4), "train_loss": loss, "test_error": test[i]}
        if val is not None:
            point["val_error"] = val[i]
        history.append(point)
    log.info(
        "step %d (epoch %.2f): %d of %d members training, test_error %s",
        done,
        done / per_epoch,
        sum(alive.tolist()),
        len(histories),
        " ".join(f"{e:.3f}" for e in test),
    )


def members_per_population(model: nn.Module, x: Tensor, cache_mb: float) -> int | None:
    """How many members of ``model`` (on the CPU, batches like ``x``) one population should hold: as
    many as keep the largest output of any of its norm layers (registry plugins, ``identity``
    included), for all members together, within ``cache_mb`` MiB (None: no limit, or no norm layer).
    A wide population's every layer writes K members' activations as one tensor, and its backward
    pass reads them all again; once they leave the caches, its memory-bound layers (norms,
    activations) slow down: 16 conv nets at batch 32, 64 and 128 trained as one population at 0.94x,
    0.76x and 0.73x the speed of the same runs one by one, as populations of at most 9, 4 and 2
    members at 1.44x, 1.11x and 0.99x (reports/bench/population_cache.md, this repository's 2-core
    machine with 1 MiB of L2 per core and 32 MiB of L3). A recurrent net's norms see one time step
    at a time, so its populations stay whole."""
    if cache_mb <= 0 or x.device.type != "cpu":
        return None
    norms = tuple(plugin_classes())
    largest = 0

    def measure(module: nn.Module, args: tuple, output: Any) -> None:
        nonlocal largest
        if isinstance(output, Tensor):
            largest = max(largest, output.numel() * output.element_size())

    hooked_forward(model, (m for m in model.modules() if isinstance(m, norms)), measure, x)
    return max(1, int(cache_mb * 2**20 // largest)) if largest else None


def population_parts(n: int, size: int | None) -> list[slice]:
    """``range(n)`` in as few nearly equal consecutive parts of at most ``size`` as there can be."""
    parts = 1 if size is None else -(-n // size)
    sizes = [n // parts + (i < n % parts) for i in range(parts)]  # the larger ones first
    bounds = list(itertools.accumulate(sizes, initial=0))
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def train_population(
    cfgs: Sequence[DictConfig],
    progress: bool = False,
    form: str = "auto",
    out_dirs: Sequence[str | os.PathLike[str]] = (),
    cache_mb: float = 0.0,
) -> list[dict[str, Any]]:
    """Train a group and return each member's record, as :func:`normbench.experiment.run.execute` would write it
    for that member's run alone (plus ``env.population``: the size of the population it trained in, and
    ``env.population_form``: ``wide`` or ``vmap``, see :func:`~normbench.population.wide.stack_population`). A ConfigError of any
    member propagates before training; any other exception (building, training or evaluating the
    group) becomes a ``failed`` record for every member, with what training produced kept. On the CPU
    with ``cache_mb`` > 0 the group trains as several populations, one after another, each as large
    as :func:`members_per_population` allows."""
    out_dirs = [Path(d) for d in out_dirs]
    runtime = setup_runtime(cfgs[0])
    if runtime.cuda_graph and (why := _own_loop(cfgs[0])):
        raise ConfigError(f"runtime.cuda_graph=true: {why}")
    records = [new_record(cfg, *run_identity(cfg), runtime) for cfg in cfgs]
    for record in records:
        record.env["population"] = len(cfgs)
    start = time.perf_counter()
    data = prepare_data(cfgs[0], runtime)
    try:
        models = [prepare_model(cfg, data, runtime) for cfg in cfgs]
        data = data.to(runtime.device, runtime.memory_format)
        every = cfgs[0].train.checkpoint_every
        checkpoints = (
            [
                Checkpoint(d / CHECKPOINT_FILE, every, r.config_hash)
                for d, r in zip(out_dirs, records, strict=True)
            ]
            if every and out_dirs
            else None
        )
        task = task_for(cfgs[0])
        if task.own_training:  # a task with its own loop has its own population form of it
            used = task.train_population(cfgs, records, data, models, runtime, out_dirs, progress, form)
            for record in records:
                record.env["population_form"] = used
            return [seal(record, start) for record in records]
        size = members_per_population(models[0], data.x_train[: cfgs[0].batch_size], cache_mb)
        results = []
        # populations small enough for the cache, one after another
        for part in population_parts(len(cfgs), size):
            for record in records[part]:
                record.env["population"] = part.stop - part.start
            parts = checkpoints[part] if checkpoints else None
            results += fit_population(cfgs[part], models[part], data, runtime, progress, form, parts)
    except (ConfigError, KeyboardInterrupt):
        raise
    except NoWideForm as exc:  # raised as the models are stacked, before any step
        raise ConfigError(f"hydra.launcher.form=wide: {exc}; form=auto trains it under vmap") from None
    except BaseException as exc:  # a fault of the group is a result of each member
        log.exception("population of %d failed: %s", len(cfgs), exc)
        for record in records:
            record.fail(exc)
        return [seal(record, start) for record in records]
    for cfg, record, result in zip(cfgs, records, results, strict=True):
        plan = training_plan(cfg, len(data.x_train))
        record_plan(record, plan.total, plan.steps_per_epoch, plan.lr)
        record_training(record, result)
        record.env.update(population_form=result.population, cuda_graph=result.captured)
    try:
        with runtime.autocast():  # diverged members' values are dropped
            members = population_members(models, task_for(cfgs[0]), runtime.device, form=form)
            metrics = members_final_metrics(members, data, cfgs)
        for cfg, record, model, values in zip(cfgs, records, models, metrics, strict=True):
            with runtime.autocast():
                record_metrics(cfg, record, model, values if record.status == "completed" else {}, data)
        for cfg, record, model, out_dir in zip(cfgs, records, models, out_dirs, strict=False):
            if cfg.train.save_model and record.status == "completed":
                save_weights(model, out_dir / MODEL_FILE)
    except (KeyboardInterrupt, ConfigError):
        raise
    except BaseException as exc:  # the evaluation failed: what training produced is kept
        log.exception("evaluation failed: %s", exc)
        for record in records:
            record.fail(exc)
            record.metrics = {}
    return [seal(record, start) for record in records]
