"""One run, from a resolved config to its ``result.json``. Knows nothing of Hydra's runtime."""

from __future__ import annotations

import logging
import math
import os
import platform
import time
import traceback
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import normbench
from normbench.config import NON_IDENTITY_KEYS
from normbench.distributed import all_finite, finish, parallel, shard, world_from_env
from normbench.evaluate import error_and_loss, minibatch_error, precise_bn, stat_modules, stats_distance
from normbench.norms import norm_spec
from normbench.results import (
    FINAL_STATUSES,
    RESULT_FILE,
    SCHEMA_VERSION,
    InvalidRecord,
    config_hash,
    identity_config,
    load_run,
    write_json_atomic,
)
from normbench.samplers import check_class_grouped, class_grouped_batches, iid_batches
from normbench.tasks import NormLayers, build_model, load_dataset
from normbench.tasks.data import Dataset
from normbench.train import fit, lr_schedule, make_optimizer, scaled_lr

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration that cannot give a result; raised before any training, never recorded."""


def run_identity(cfg: DictConfig) -> tuple[dict[str, Any], str]:
    """The resolved config that defines the run and its hash. The same config on several torchrun
    processes is a different experiment, so their number joins the identity."""
    identity = identity_config(cfg, NON_IDENTITY_KEYS)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        identity["world_size"] = world_size
    return identity, config_hash(identity)


def previous_result(out_dir: Path, digest: str) -> dict[str, Any] | None:
    """The record in ``out_dir`` if it is a final result (completed/diverged) of the same config."""
    try:
        record = load_run(out_dir / RESULT_FILE)
    except InvalidRecord:
        return None
    if record["config_hash"] == digest and record["status"] in FINAL_STATUSES:
        return record
    return None


def setup_runtime(threads: int, seed: int) -> None:
    if threads < 1:
        raise ConfigError(f"runtime.threads={threads} must be >= 1")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)


def model_from_config(cfg: DictConfig, data: Dataset) -> nn.Module:
    """The task's model with the configured norm (``cfg.norm``: ``name`` plus the plugin's options)."""
    norm_options = {k: v for k, v in OmegaConf.to_container(cfg.norm, resolve=True).items() if k != "name"}
    model_kwargs = OmegaConf.to_container(cfg.task.model, resolve=True)
    arch = model_kwargs.pop("arch")
    norms = NormLayers(cfg.norm.name, norm_options)
    return build_model(arch, data.input_shape, data.num_classes, norms, **model_kwargs)


def prepare(cfg: DictConfig) -> tuple[Dataset, nn.Module]:
    """Load the data and build the model, turning every configuration problem into ConfigError."""
    try:
        data = load_dataset(cfg.task.dataset)
    except ValueError as exc:
        raise ConfigError(f"task.dataset: {exc}") from None
    n_train, bs = len(data.x_train), cfg.batch_size
    if not 1 <= bs <= n_train:
        raise ConfigError(f"batch_size={bs} must be between 1 and the training set size {n_train}")
    if cfg.data.sampler == "class_grouped":
        why = check_class_grouped(bs, cfg.data.classes_per_batch, data.num_classes)
        if why:
            raise ConfigError(why)
    try:
        torch.manual_seed(cfg.seed)
        model = model_from_config(cfg, data)
        with torch.no_grad():  # a dry forward in eval mode: shape problems surface now, state untouched
            model.eval()(data.x_train[:2])
    except (ValueError, TypeError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        raise ConfigError(f"norm={cfg.norm.name} cannot build task={cfg.task.name}: {msg}") from None
    return data, model


def batch_iterator(cfg: DictConfig, data: Dataset, gen: torch.Generator):
    if cfg.data.sampler == "class_grouped":
        return class_grouped_batches(data.y_train, cfg.batch_size, cfg.data.classes_per_batch, gen)
    return iid_batches(len(data.x_train), cfg.batch_size, gen)


def environment(threads: int) -> dict[str, Any]:
    return {
        "normbench": normbench.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "platform": platform.platform(),
    }


def execute(cfg: DictConfig, out_dir: Path, choices: Mapping[str, Any], progress: bool = False) -> dict:
    """Train and evaluate the run ``cfg`` and write ``out_dir/result.json``; return the record.

    Raises ConfigError (before training, writing nothing) for configurations that cannot run.
    A non-finite training loss or final metric gives status ``diverged``; an exception during
    training gives ``failed``.
    """
    identity, digest = run_identity(cfg)
    setup_runtime(cfg.runtime.threads, cfg.seed)
    data, model = prepare(cfg)
    world = world_from_env()
    n_train, bs = len(data.x_train), cfg.batch_size
    if bs < world.size:
        raise ConfigError(f"batch_size={bs} is smaller than the {world.size} processes it is split across")
    if world.size > 1:
        choices = {**choices, "world_size": world.size}
    steps_per_epoch = n_train // bs
    total = cfg.train.epochs * steps_per_epoch if cfg.train.budget == "epochs" else cfg.train.steps
    if total < 1:
        raise ConfigError(f"the budget gives {total} training steps (train.{cfg.train.budget})")
    eval_every = (
        steps_per_epoch if cfg.train.budget == "epochs" else math.ceil(total / cfg.train.history_points)
    )
    lr = scaled_lr(cfg.optim.lr, bs, cfg.optim.base_batch_size, cfg.optim.lr_scaling)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "status": "failed",
        "config_hash": digest,
        "choices": {
            "task": cfg.task.name,
            "norm": cfg.norm.name,
            "batch_size": bs,
            "seed": cfg.seed,
            **dict(choices),
        },
        "config": identity,
        "metrics": {},
        "history": [],
        "steps": 0,
        "planned_steps": total,
        "steps_per_epoch": steps_per_epoch,
        "lr": lr,
        "env": environment(cfg.runtime.threads),
    }
    gen = torch.Generator().manual_seed(cfg.seed)
    trained = parallel(model, world)
    optimizer = make_optimizer(
        cfg.optim.name, trained.parameters(), lr, cfg.optim.momentum, cfg.optim.weight_decay
    )
    start = time.perf_counter()
    try:
        result = fit(
            trained,
            data,
            shard(batch_iterator(cfg, data, gen), world),
            optimizer,
            lr_schedule(lr, total, cfg.optim.schedule, cfg.optim.warmup_steps),
            total,
            eval_every,
            steps_per_epoch,
            progress and world.is_main,
            is_finite=lambda loss: all_finite(loss, world),
            eval_model=model,
        )
        record.update(
            status=result.status,
            steps=result.steps,
            history=result.history,
            diverged_at_step=result.diverged_at_step,
            time_per_step_s=result.train_time_s / max(1, result.steps),
        )
        record["metrics"] = final_metrics(model, data, cfg) if result.status == "completed" else {}
        overflowed = sorted(k for k, v in record["metrics"].items() if not math.isfinite(v))
        if overflowed:  # the training losses stayed finite but the trained model's outputs do not
            log.warning("non-finite final metrics %s: run diverged", ", ".join(overflowed))
            record.update(
                status="diverged",
                diverged_at_step=result.steps,
                error=f"non-finite final metrics: {', '.join(overflowed)}",
                metrics={},
            )
        record["layers"] = layer_metrics(model)
        record["metrics"].update(averaged(record["layers"], prefix=f"{cfg.norm.name}_"))
    except Exception as exc:  # a fault of the run is a result, not a crash of the sweep
        log.error("run failed: %s\n%s", exc, traceback.format_exc())
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    record["wall_time_s"] = time.perf_counter() - start
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    if world.is_main:
        write_json_atomic(out_dir / RESULT_FILE, record)
    finish(world)
    return record


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
    """Errors and losses in eval mode (running statistics), the generalization gap, and for
    batch-dependent norms the same errors with PreciseBN statistics and with mini-batch statistics
    (i.i.d. and class-sorted test batches), plus the distance of the running statistics to PreciseBN's.
    ``diverged`` marks a final training error at chance level under every evaluation."""
    test_error, test_loss = error_and_loss(model, data.x_test, data.y_test)
    train_error, train_loss = error_and_loss(model, data.x_train, data.y_train)
    metrics: dict[str, float | bool] = {
        "test_error": test_error,
        "test_loss": test_loss,
        "train_error": train_error,
        "train_loss": train_loss,
        "generalization_gap": test_error - train_error,
    }
    if norm_spec(cfg.norm.name).batch_dependent and cfg.eval.batch_stats:
        bs = cfg.batch_size
        gen = torch.Generator().manual_seed(cfg.seed + 10_000)  # its own stream: training is unaffected
        test_order = torch.randperm(len(data.x_test), generator=gen)
        train_order = torch.randperm(len(data.x_train), generator=gen)[: cfg.eval.minibatch_samples]
        metrics["test_error_minibatch"] = minibatch_error(model, data.x_test, data.y_test, bs, test_order)
        metrics["train_error_minibatch"] = minibatch_error(model, data.x_train, data.y_train, bs, train_order)
        by_class = torch.argsort(data.y_test, stable=True)
        metrics["test_error_minibatch_sorted"] = minibatch_error(
            model, data.x_test, data.y_test, bs, by_class
        )
        if stat_modules(model):
            precise = precise_bn(
                model, data.x_train, cfg.eval.precise_bn_batch_size or bs, cfg.eval.precise_bn_samples, gen
            )
            metrics["test_error_precise_bn"], metrics["test_loss_precise_bn"] = error_and_loss(
                precise, data.x_test, data.y_test
            )
            metrics["train_error_precise_bn"], _ = error_and_loss(precise, data.x_train, data.y_train)
            metrics.update(stats_distance(model, precise))
    best_train = min(v for k, v in metrics.items() if k.startswith("train_error"))
    metrics["diverged"] = bool(best_train >= cfg.train.max_train_error_diverged)
    return metrics
