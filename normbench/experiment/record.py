"""A run's record (``result.json``): what it starts as, its environment, and the training and final
evaluation results it gathers (errors, losses, PreciseBN and mini-batch statistics, layers' own metrics)."""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from normbench.evaluate import Members, OneModel, eval_mode
from normbench.norms import norm_spec
from normbench.results import (
    SCHEMA_VERSION,
)
from normbench.runtime import CPU_FP32, Runtime
from normbench.tasks.dataset import Dataset
from normbench.tasks.registry import task_for
from normbench.train import FitResult
from normbench.version import __version__

log = logging.getLogger(__name__)


def environment(threads: int, runtime: Runtime) -> dict[str, Any]:
    return {
        "normbench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "platform": platform.platform(),
        **runtime.describe(),
    }


@dataclass(kw_only=True)
class RunRecord:
    """The record of one run, which every path fills (a single run, a population's member, a GAN) and
    writes as ``result.json`` (:meth:`to_json`; :func:`normbench.results.record_problem` checks what is
    read back). Fields in the order the file lists them; the optional ones are written once set."""

    schema_version: int = SCHEMA_VERSION
    status: str = "failed"  # until the run produces something: completed, diverged or failed
    config_hash: str
    config: dict[str, Any]  # the identity: the resolved config without where/how keys
    metrics: dict[str, Any] = field(default_factory=dict)
    main_metric: dict[str, Any]  # what reports rank runs by: the task's main metric and its direction
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    env: dict[str, Any]
    planned_steps: int | None = None
    steps_per_epoch: int | None = None
    lr: float | None = None  # the peak learning rate after scaling
    diverged_at_step: int | None = None
    time_per_step_s: float | None = None
    fd_classifier: str | None = None  # GANs: the hash of the classifier whose features the FD uses
    layers: dict[str, dict[str, float]] | None = None  # each norm layer's own metrics
    error: str | None = None
    wall_time_s: float | None = None
    finished_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as ``result.json`` holds it: every field that is set, in order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def fail(self, exc: BaseException) -> None:
        self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"

    @property
    def final(self) -> bool:
        """A completed or diverged run: a rerun skips it, nothing is left to resume."""
        return self.status in ("completed", "diverged")


def new_record(
    cfg: DictConfig, identity: dict[str, Any], digest: str, runtime: Runtime = CPU_FP32
) -> RunRecord:
    """The record of a run that has not produced anything yet (status ``failed`` until it does)."""
    return RunRecord(
        config_hash=digest,
        config=identity,
        main_metric=main_metric(cfg),
        env=environment(cfg.runtime.threads, runtime),
    )


def main_metric(cfg: DictConfig) -> dict[str, Any]:
    """What reports rank the run by: the task's main metric and its direction, and (only where it is
    False) whether the task's errors are fractions in [0, 1]."""
    metric = {"name": cfg.task.metric, "lower_is_better": bool(cfg.task.lower_is_better)}
    if not task_for(cfg).error_is_fraction:
        metric["error_is_fraction"] = False
    return metric


def seal(record: RunRecord, start: float) -> dict[str, Any]:
    """``record`` with its wall time since ``start`` (a ``time.perf_counter()``) and finishing time, as
    ``result.json`` holds it."""
    record.wall_time_s = time.perf_counter() - start
    record.finished_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    return record.to_json()


def record_plan(record: RunRecord, total: int, steps_per_epoch: int, lr: float) -> None:
    """What training is planned to do, stated before it starts."""
    record.planned_steps, record.steps_per_epoch, record.lr = total, steps_per_epoch, lr


def record_training(record: RunRecord, result: FitResult) -> None:
    record.status, record.steps, record.history = result.status, result.steps, result.history
    record.diverged_at_step = result.diverged_at_step
    record.time_per_step_s = result.train_time_s / max(1, result.steps)


def record_evaluation(
    cfg: DictConfig, record: RunRecord, model: nn.Module, data: Dataset, runtime: Runtime
) -> None:
    """The trained model's final metrics (for a completed run) and its layers' own metrics into
    ``record``; non-finite final metrics turn a completed run into a diverged one."""
    with runtime.autocast():
        metrics = final_metrics(model, data, cfg) if record.status == "completed" else {}
        record_metrics(cfg, record, model, metrics, data)


def record_metrics(
    cfg: DictConfig, record: RunRecord, model: nn.Module, metrics: dict[str, Any], data: Dataset
) -> None:
    """``metrics`` (the final metrics, or {} for a diverged run) with the task's own metrics of the
    trained ``model`` on ``data`` (:meth:`normbench.tasks.registry.Task.metrics`, for a completed run), and
    the layers' own metrics of ``model`` into ``record``; non-finite values turn a completed run into a
    diverged one."""
    if metrics:
        with torch.no_grad(), eval_mode(model):
            metrics.update(task_for(cfg).metrics(model, data))
    record.layers = layer_metrics(model)
    metrics.update(averaged(record.layers, prefix=f"{cfg.norm.name}_"))
    overflowed = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if overflowed:  # the training losses stayed finite but the trained model's outputs do not
        log.warning("non-finite final metrics %s: run diverged", ", ".join(overflowed))
        record.status, record.diverged_at_step = "diverged", record.steps
        record.error = f"non-finite final metrics: {', '.join(overflowed)}"
        metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    record.metrics = metrics


def layer_metrics(model: nn.Module) -> dict[str, dict[str, float]]:
    """What norm layers report about themselves (``extra_metrics()``, e.g. SwitchNorm's mixture)."""
    return {
        name: m.extra_metrics()
        for name, m in model.named_modules()
        if callable(getattr(m, "extra_metrics", None))
    }


def averaged(layers: Mapping[str, Mapping[str, float]], prefix: str) -> dict[str, float]:
    keys = sorted({k for values in layers.values() for k in values})
    return {f"{prefix}{k}": sum(v[k] for v in layers.values()) / len(layers) for k in keys}


def final_metrics(model: nn.Module, data: Dataset, cfg: DictConfig) -> dict[str, float | bool]:
    """Errors and losses in eval mode (running statistics) on the test, training and validation sets,
    the generalization gap, and for batch-dependent norms the same errors with PreciseBN statistics and
    with mini-batch statistics (i.i.d. and class-sorted test batches), plus the distance of the running
    statistics to PreciseBN's. ``diverged`` marks a final training error at chance level under every
    evaluation (for a task whose errors are fractions; a task with errors in its own units has none)."""
    return members_final_metrics(OneModel(model, task_for(cfg)), data, [cfg])[0]


def members_final_metrics(
    members: Members, data: Dataset, cfgs: Sequence[DictConfig]
) -> list[dict[str, float | bool]]:
    """:func:`final_metrics` of each of ``members`` (configs ``cfgs``, which share every setting but the
    :data:`normbench.population.grouping.MEMBER_KEYS`), each drawing its evaluation batches from its
    own stream (its seed + 10000)."""
    cfg = cfgs[0]
    splits = {"test": (data.x_test, data.y_test), "train": (data.x_train, data.y_train)}
    if data.x_val is not None:
        splits["val"] = (data.x_val, data.y_val)
    metrics: list[dict[str, float | bool]] = [{} for _ in cfgs]

    def put(name: str, values: Sequence[float]) -> None:
        for m, v in zip(metrics, values, strict=True):
            m[name] = v

    for split, (x, y) in splits.items():
        pairs = members.error_and_loss(x, y)
        put(f"{split}_error", [e for e, _ in pairs])
        put(f"{split}_loss", [loss for _, loss in pairs])
    put("generalization_gap", [m["test_error"] - m["train_error"] for m in metrics])
    if norm_spec(cfg.norm.name).batch_dependent and cfg.eval.batch_stats:
        bs = cfg.batch_size
        # each member's own stream: training is unaffected
        gens = [torch.Generator().manual_seed(c.seed + 10_000) for c in cfgs]
        orders: dict[str, list[Tensor]] = {"test": [], "train": [], "val": []}
        for gen in gens:
            orders["test"].append(torch.randperm(len(data.x_test), generator=gen))
            orders["train"].append(
                torch.randperm(len(data.x_train), generator=gen)[: cfg.eval.minibatch_samples]
            )
            if data.x_val is not None:
                orders["val"].append(torch.randperm(len(data.x_val), generator=gen))
        for split in splits:
            put(f"{split}_error_minibatch", members.minibatch_error(*splits[split], bs, orders[split]))
        by_class = torch.argsort(data.y_test, stable=True)
        put(
            "test_error_minibatch_sorted",
            members.minibatch_error(data.x_test, data.y_test, bs, [by_class] * len(cfgs)),
        )
        if members.has_stat_modules():
            precise = members.precise_bn(
                data.x_train, cfg.eval.precise_bn_batch_size or bs, cfg.eval.precise_bn_samples, gens
            )
            for split, (x, y) in splits.items():
                pairs = precise.error_and_loss(x, y)
                put(f"{split}_error_precise_bn", [e for e, _ in pairs])
                if split != "train":
                    put(f"{split}_loss_precise_bn", [loss for _, loss in pairs])
            for m, distances in zip(metrics, members.stats_distance(precise), strict=True):
                m.update(distances)
    if members.task.error_is_fraction:  # a threshold on another task's errors would mean nothing
        for m, c in zip(metrics, cfgs, strict=True):
            best_train = min(v for k, v in m.items() if k.startswith("train_error"))
            m["diverged"] = bool(best_train >= c.train.max_train_error_diverged)
    return metrics
