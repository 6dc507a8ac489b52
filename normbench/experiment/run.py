"""One run, from a resolved config to its ``result.json``: build, train, evaluate, record. Knows nothing
of Hydra's runtime."""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from normbench.checkpoint import CHECKPOINT_FILE, MODEL_FILE, Checkpoint, save_weights
from normbench.config import ConfigError, check_values
from normbench.distributed import World, all_finite, finish, parallel, shard, world_from_env
from normbench.experiment.build import augmentation, batch_iterator, prepare, setup_runtime
from normbench.experiment.identity import run_identity
from normbench.experiment.record import (
    RunRecord,
    layer_metrics,
    new_record,
    record_evaluation,
    record_plan,
    record_training,
    seal,
)
from normbench.population.train import train_population, trains_captured_alone
from normbench.results import (
    RESULT_FILE,
    write_json_atomic,
)
from normbench.runtime import CPU_FP32, Runtime
from normbench.tasks.dataset import Dataset
from normbench.tasks.registry import Task, task_for, untrainable_norm
from normbench.trackers import layer_values, log_record, open_tracker
from normbench.train import FitResult, fit, lr_schedule, make_optimizer, training_plan

log = logging.getLogger(__name__)


def check_run(cfg: DictConfig) -> Task:
    """The run ``cfg``'s task, once the config's values and the task's own rules accept it (ConfigError
    naming the setting otherwise): what every path checks before it trains a run, alone or in a population."""
    check_values(cfg)
    problem = untrainable_norm("norm", cfg.norm.name)
    if problem:
        raise ConfigError(problem)
    task = task_for(cfg)
    task.check(cfg)
    recorded = task.metric_names(cfg)
    if recorded is not None and cfg.task.metric not in recorded:
        raise ConfigError(
            f"task.metric={cfg.task.metric}: not a metric every run of task={cfg.task.name} records "
            f"(they record: {', '.join(sorted(recorded))})"
        )
    return task


def execute(cfg: DictConfig, out_dir: str | os.PathLike[str], progress: bool = False) -> dict[str, Any]:
    """Train and evaluate the run ``cfg`` and write ``out_dir/result.json``; return the record.

    Raises ConfigError, before any training and writing nothing, for a configuration that cannot
    run. Everything after that is recorded: a non-finite training loss or final metric gives status
    ``diverged``; any exception (building the model, the optimizer, training, evaluation) ``failed``
    with its message. Under torchrun only process 0 evaluates and writes. On one CUDA device, a run
    that a population could train trains as a population of one, its step captured as a CUDA graph
    (:func:`~normbench.population.train.trains_captured_alone`; ``env.population`` is 1).
    """
    out_dir = Path(out_dir)
    task = check_run(cfg)
    identity, digest = run_identity(cfg)
    runtime = setup_runtime(cfg)
    world = world_from_env()
    if trains_captured_alone(cfg, runtime, world.size):  # on a GPU: its step one CUDA graph
        (written,) = train_population([cfg], progress, out_dirs=[out_dir])
        write_record(cfg, out_dir, written)
        return written
    record = new_record(cfg, identity, digest, runtime)
    start = time.perf_counter()
    try:
        _train_and_evaluate(cfg, task, record, world, runtime, progress, out_dir)
    except ConfigError:
        finish(world)
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit from a plugin too: a fault of the run is a result
        log.error("run failed: %s\n%s", exc, traceback.format_exc())
        record.fail(exc)
    finish(world)
    written = seal(record, start)
    if world.is_main:
        write_json_atomic(out_dir / RESULT_FILE, written)
        if record.final:
            (out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        if task.own_training:  # its own loop streams nothing: the record is logged once it is written
            log_to_tracker(cfg, out_dir, written)
    return written


def write_record(cfg: DictConfig, out_dir: Path, record: dict[str, Any]) -> None:
    """The record of a run trained as a population's member: its ``result.json`` in ``out_dir``, its
    checkpoint removed once the record is final, and its tracker (``logger``) with the history
    replayed (a member logs when its population ends; a tracker that fails then is an error in the
    log, :class:`normbench.trackers.Kept`)."""
    write_json_atomic(out_dir / RESULT_FILE, record)
    if record["status"] in ("completed", "diverged"):  # final: nothing left to resume
        (out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    log_to_tracker(cfg, out_dir, record)


def log_to_tracker(cfg: DictConfig, out_dir: Path, record: dict[str, Any]) -> None:
    """A written ``record`` into the run's tracker (``logger``), its history replayed: for the runs whose
    loop streams nothing as it trains (a population's members, a task with its own training)."""
    tracker = open_tracker(cfg.logger, out_dir, record["config"], record["config_hash"], cfg.sweep.name)
    if tracker is not None:
        try:
            log_record(tracker, record)
        finally:
            tracker.close()


def _train_and_evaluate(
    cfg: DictConfig,
    task: Task,
    record: RunRecord,
    world: World,
    runtime: Runtime,
    progress: bool,
    out_dir: Path,
) -> None:
    data, model = prepare(cfg, runtime)
    for key in ("checkpoint_every", "save_model"):
        if cfg.train[key] and world.size > 1:
            raise ConfigError(f"train.{key}={str(cfg.train[key]).lower()}: not supported under torchrun yet")
    if task.own_training:
        if world.size > 1:
            raise ConfigError(
                f"task={cfg.task.name}: the {task.name} task trains in one process (got {world.size} under torchrun)"
            )
        task.train(cfg, record, data, model, runtime, out_dir, progress)
        return
    bs = cfg.batch_size
    if bs < world.size:
        raise ConfigError(f"batch_size={bs}: smaller than the {world.size} processes it is split across")
    plan = training_plan(cfg, len(data.x_train))  # fit_run trains by it; the record states it first
    record_plan(record, plan.total, plan.steps_per_epoch, plan.lr)
    trained = parallel(model, world)
    if runtime.compile:
        trained = torch.compile(trained)
    checkpoint = (
        Checkpoint(out_dir / CHECKPOINT_FILE, cfg.train.checkpoint_every, record.config_hash)
        if cfg.train.checkpoint_every
        else None
    )
    tracker = (
        open_tracker(cfg.logger, out_dir, record.config, record.config_hash, cfg.sweep.name)
        if world.is_main
        else None
    )
    try:
        result = fit_run(
            cfg,
            trained,
            data,
            runtime,
            world,
            eval_model=model,
            progress=progress,
            checkpoint=checkpoint,
            # each history point with the norms' own per-layer reports (normbench.trackers)
            on_point=None
            if tracker is None
            else lambda point: tracker.log(point["step"], {**point, **layer_values(layer_metrics(model))}),
        )
        record_training(record, result)
        # DistributedDataParallel's reducer holds the process group: let it go while every process is
        # still here (destroyed after a peer has exited, gloo's threads can wait forever)
        del trained
        finish(world)  # evaluation is process 0's alone, with no collective left to wait on
        if world.is_main:
            record_evaluation(cfg, record, model, data, runtime)
            if cfg.train.save_model and record.status == "completed":
                save_weights(model, out_dir / MODEL_FILE)
            if tracker is not None:
                log_record(tracker, record.to_json(), history=False)  # the history was streamed as it trained
    finally:
        if tracker is not None:
            tracker.close()


def fit_run(
    cfg: DictConfig,
    model: nn.Module,
    data: Dataset,
    runtime: Runtime = CPU_FP32,
    world: World = World(),  # noqa: B008 - a frozen value: one process
    eval_model: nn.Module | None = None,
    progress: bool = False,
    checkpoint: Checkpoint | None = None,
    on_point: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train ``model`` (possibly wrapped for ``world``) as the run ``cfg`` trains it: its plan,
    optimizer, schedule, batches (this process's share) and augmentation; ``eval_model`` (default
    ``model``) is what the history evaluates, on process 0 only; ``checkpoint``: see :func:`fit`."""
    plan = training_plan(cfg, len(data.x_train))
    optimizer = make_optimizer(
        cfg.optim.name, model.parameters(), plan.lr, cfg.optim.momentum, cfg.optim.weight_decay
    )
    return fit(
        model,
        data,
        shard(batch_iterator(cfg, data, torch.Generator().manual_seed(cfg.seed)), world),
        optimizer,
        lr_schedule(plan.lr, plan.total, cfg.optim.schedule, cfg.optim.warmup_steps),
        plan.total,
        plan.eval_every,
        plan.steps_per_epoch,
        progress and world.is_main,
        is_finite=lambda loss: all_finite(loss, world),
        eval_model=eval_model,
        evaluate=world.is_main,
        runtime=runtime,
        transform=augmentation(cfg, data.x_train.device),
        checkpoint=checkpoint,
        on_point=on_point,
        task=task_for(cfg),
    )
