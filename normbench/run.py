"""One run, from a resolved config to its ``result.json``. Knows nothing of Hydra's runtime."""

from __future__ import annotations

import copy
import logging
import math
import os
import platform
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from normbench.checkpoint import CHECKPOINT_FILE, MODEL_FILE, Checkpoint, save_weights
from normbench.config import ConfigError, check_values
from normbench.distributed import World, all_finite, finish, parallel, shard, world_from_env
from normbench.evaluate import Members, OneModel, eval_mode
from normbench.identity import LATER_KEYS
from normbench.norms import available_norms, norm_spec
from normbench.results import (
    FINAL_STATUSES,
    RESULT_FILE,
    SCHEMA_VERSION,
    InvalidRecord,
    config_hash,
    identity_config,
    load_run,
    remove_stale_temporaries,
    run_lock,
    write_json_atomic,
)
from normbench.schema import NON_IDENTITY_KEYS, Config
from normbench.version import __version__

__all__ = ["ConfigError", "execute", "load_model", "previous_result", "run_identity"]
from normbench.runtime import CPU_FP32, Runtime, use_deterministic_kernels
from normbench.samplers import check_class_grouped, class_grouped_batches, iid_batches
from normbench.tasks import ModelConfigError, NormLayers, build_model, load_dataset
from normbench.tasks.cifar import crop_flip
from normbench.tasks.dataset import Dataset
from normbench.tasks.gan import GAN
from normbench.tasks.models import scale_initial_weights
from normbench.trackers import layer_values, log_record, open_tracker
from normbench.train import FitResult, fit, lr_schedule, make_optimizer, training_plan
from normbench.train_gan import train_gan

log = logging.getLogger(__name__)


def run_identity(cfg: DictConfig) -> tuple[dict[str, Any], str]:
    """The resolved config that defines the run and its hash. The same config on several torchrun
    processes is a different experiment, so their number joins the identity."""
    identity = identity_config(cfg, NON_IDENTITY_KEYS, LATER_KEYS)
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


def claim_folder(cfg: DictConfig, out_dir: Path, locks: ExitStack, lock: bool = True) -> str | None:
    """Take ``out_dir`` to train the run ``cfg`` in: None when it is this process's to train (its run
    lock now held on ``locks``, stale temporaries removed), otherwise why not: ``skipped`` (a final
    result of this config is there, unless ``runtime.force``) or ``running_elsewhere`` (another live
    process holds the lock). ``lock=False`` (torchrun, where every process trains the same folder)
    checks for a result only."""
    digest = run_identity(cfg)[1]
    if not cfg.runtime.force and previous_result(out_dir, digest) is not None:
        log.info("skipped: %s already holds a result of this config", out_dir)
        return "skipped"
    if not lock:
        return None
    if not locks.enter_context(run_lock(out_dir)):
        log.warning("skipped: another live process is training %s", out_dir)
        return "running_elsewhere"
    if not cfg.runtime.force and previous_result(out_dir, digest) is not None:
        return "skipped"  # finished by the process that held the lock a moment ago
    remove_stale_temporaries(out_dir)
    return None


def setup_runtime(cfg: DictConfig) -> Runtime:
    """The run's device and arithmetic (ConfigError if this machine cannot give them), threads,
    deterministic kernels and the seed."""
    runtime = Runtime.from_config(cfg.runtime)
    torch.set_num_threads(cfg.runtime.threads)
    use_deterministic_kernels(runtime.device)
    torch.manual_seed(cfg.seed)
    return runtime


class PluginError(RuntimeError):
    """A norm plugin broke its contract (e.g. returned a tensor of another shape): a failed run."""


def model_and_norms(cfg: DictConfig, data: Dataset) -> tuple[nn.Module, list[nn.Module]]:
    """The task's model with the configured norm (``cfg.norm``: ``name`` plus the plugin's options),
    and the norm layers the registry built for it."""
    norm_options = {k: v for k, v in OmegaConf.to_container(cfg.norm, resolve=True).items() if k != "name"}
    model_kwargs = OmegaConf.to_container(cfg.task.model, resolve=True)
    arch = model_kwargs.pop("arch")
    init_scale = model_kwargs.pop("init_scale", 1.0)
    gan_keys = {
        k: model_kwargs.pop(k) for k in ("g_norm", "d_norm", "d_batches", "latent") if k in model_kwargs
    }
    if arch == "gan":
        model, built = build_gan(
            cfg, data, norm_options, gan_keys["g_norm"], gan_keys["d_norm"], gan_keys["latent"]
        )
    else:
        norms = NormLayers(cfg.norm.name, norm_options)
        model = build_model(arch, data.input_shape, data.num_classes, norms, **model_kwargs)
        built = norms.built
    if init_scale != 1.0:
        scale_initial_weights(model, init_scale, built)
    return model, built


def build_gan(
    cfg: DictConfig, data: Dataset, norm_options: Mapping[str, Any], g_norm: str, d_norm: str, latent: int
) -> tuple[GAN, list[nn.Module]]:
    """The GAN of ``arch=gan``: each network's norm is ``task.model.g_norm`` / ``d_norm`` ("" = the run's
    norm), with the run's norm options where it is the run's norm and the plugin's defaults otherwise."""
    nets = {}
    for key, name in (("g_norm", g_norm), ("d_norm", d_norm)):
        name = name or cfg.norm.name
        try:
            norm_spec(name)
        except KeyError:
            raise ModelConfigError(
                f"task.model.{key}={name}: not a registered norm; available: {', '.join(available_norms())}"
            ) from None
        same = norm_spec(name).name == norm_spec(cfg.norm.name).name
        nets[key] = NormLayers(name, norm_options if same else {})
    gan = GAN(data.input_shape, latent, cfg.task.model.width, nets["g_norm"], nets["d_norm"])
    return gan, nets["g_norm"].built + nets["d_norm"].built


def model_from_config(cfg: DictConfig, data: Dataset) -> nn.Module:
    return model_and_norms(cfg, data)[0]


def load_model(run_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """The model a run trained, in eval mode: rebuilt from the config in its ``result.json`` and loaded
    with the weights ``train.save_model=true`` kept in ``model.pt`` (read with ``weights_only=True``)."""
    run_dir = Path(run_dir)
    weights = run_dir / MODEL_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no saved weights (train the run with train.save_model=true)")
    record = load_run(run_dir / RESULT_FILE)
    cfg = OmegaConf.merge(OmegaConf.structured(Config), record["config"])
    model = model_from_config(cfg, prepare_data(cfg))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.to(device).eval()


def _same_shape(module: nn.Module, inputs: tuple[Tensor, ...], output: Any) -> None:
    if not isinstance(output, Tensor) or output.shape != inputs[0].shape:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise PluginError(
            f"norm plugin {type(module).__name__} returned {got} for an input of shape {tuple(inputs[0].shape)}"
        )


def dry_forward(model: nn.Module, norms: list[nn.Module], x: Tensor) -> None:
    """One eval-mode forward without gradients (state untouched) that checks every norm layer returns
    the shape it was given: shape problems surface before training."""
    handles = [m.register_forward_hook(_same_shape) for m in norms]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()


def one_sample_step(model: nn.Module, x: Tensor, cfg: DictConfig) -> None:
    """A training-mode forward of one sample on a copy: a batch-dependent norm that sees one value per
    channel at batch size 1 (features, gate pre-activations) cannot train there."""
    try:
        with torch.no_grad():
            copy.deepcopy(model).train()(x)
    except ValueError as exc:
        raise ConfigError(
            f"batch_size=1: norm={cfg.norm.name} normalizes over the samples of a batch, which one sample "
            f"cannot give in task={cfg.task.name} ({exc}); use a batch-independent norm such as layernorm"
        ) from None


def prepare_data(cfg: DictConfig, runtime: Runtime = CPU_FP32) -> Dataset:
    """The run's data split (train/validation/test, on the CPU), after the checks that need it: a
    setting the task cannot give (a batch larger than the training set, a class-grouped batch the
    classes cannot fill, an image-only setting on 1-D inputs) raises ConfigError."""
    try:
        data = load_dataset(
            cfg.task.dataset,
            cfg.data.root,
            cfg.data.download,
            cfg.data.mnist1d_samples,
            cfg.data.mnist1d_test_samples,
        )
    except (OSError, ValueError) as exc:  # unknown, missing (without data.download), bad download
        raise ConfigError(f"task.dataset={cfg.task.dataset}: {exc}") from None
    try:
        data = data.split(cfg.data.val_size, cfg.data.split_seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    image_only = {  # settings that need (C, H, W) inputs -> what the error says they are for
        f"task.augment={getattr(cfg.task.augment, 'value', cfg.task.augment)}": (
            cfg.task.augment != "none",
            "image tasks",
        ),
        "runtime.channels_last=true": (runtime.channels_last, "tasks with 2-D inputs"),
    }
    for setting, (asked, allowed) in image_only.items():
        if asked and len(data.input_shape) != 3:
            raise ConfigError(
                f"{setting}: only for {allowed} (C, H, W); task={cfg.task.name} has inputs of shape "
                f"{data.input_shape}"
            )
    n_train, bs = len(data.x_train), cfg.batch_size
    if not 1 <= bs <= n_train:
        raise ConfigError(f"batch_size={bs}: must be between 1 and the training set size {n_train}")
    if cfg.data.sampler == "class_grouped":
        why = check_class_grouped(bs, cfg.data.classes_per_batch, data.num_classes)
        if why:
            raise ConfigError(why)
    return data


def prepare_model(cfg: DictConfig, data: Dataset, runtime: Runtime = CPU_FP32) -> nn.Module:
    """The run's model, initialised from ``cfg.seed`` on the CPU (so a seed gives the same initial
    weights on every device), checked by a dry forward, then moved to ``runtime.device``. A norm that
    cannot build the task raises ConfigError; any other exception (a broken plugin) propagates."""
    bs = cfg.batch_size
    try:
        torch.manual_seed(cfg.seed)
        model, norms = model_and_norms(cfg, data)
        dry_forward(model, norms, data.x_train[:2])
        if bs == 1 and norm_spec(cfg.norm.name).batch_dependent:
            one_sample_step(model, data.x_train[:1], cfg)
    except ConfigError:
        raise
    except ModelConfigError as exc:
        raise ConfigError(str(exc)) from None
    except (ValueError, TypeError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        raise ConfigError(f"norm={cfg.norm.name} cannot build task={cfg.task.name}: {msg}") from None
    return model.to(runtime.device, memory_format=runtime.memory_format)


def prepare(cfg: DictConfig, runtime: Runtime = CPU_FP32) -> tuple[Dataset, nn.Module]:
    """Load the data and build the model, both on ``runtime.device``. A configuration that cannot work
    on the task raises ConfigError; any other exception (a broken plugin) propagates and becomes a
    failed record."""
    data = prepare_data(cfg, runtime)
    model = prepare_model(cfg, data, runtime)
    return data.to(runtime.device, runtime.memory_format), model


def batch_iterator(cfg: DictConfig, data: Dataset, gen: torch.Generator):
    if cfg.data.sampler == "class_grouped":
        return class_grouped_batches(data.y_train, cfg.batch_size, cfg.data.classes_per_batch, gen)
    return iid_batches(len(data.x_train), cfg.batch_size, gen)


def environment(threads: int, runtime: Runtime) -> dict[str, Any]:
    return {
        "normbench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "platform": platform.platform(),
        **runtime.describe(),
    }


def new_record(
    cfg: DictConfig, identity: dict[str, Any], digest: str, runtime: Runtime = CPU_FP32
) -> dict[str, Any]:
    """The record of a run that has not produced anything yet (status ``failed`` until it does)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "failed",
        "config_hash": digest,
        "config": identity,
        "metrics": {},
        # what reports rank runs by: the task's main metric and its direction
        "main_metric": {"name": cfg.task.metric, "lower_is_better": bool(cfg.task.lower_is_better)},
        "history": [],
        "steps": 0,
        "env": environment(cfg.runtime.threads, runtime),
    }


def execute(cfg: DictConfig, out_dir: Path, progress: bool = False) -> dict[str, Any]:
    """Train and evaluate the run ``cfg`` and write ``out_dir/result.json``; return the record.

    Raises ConfigError, before any training and writing nothing, for a configuration that cannot
    run. Everything after that is recorded: a non-finite training loss or final metric gives status
    ``diverged``; any exception (building the model, the optimizer, training, evaluation) ``failed``
    with its message. Under torchrun only process 0 evaluates and writes.
    """
    check_values(cfg)
    identity, digest = run_identity(cfg)
    runtime = setup_runtime(cfg)
    world = world_from_env()
    record = new_record(cfg, identity, digest, runtime)
    start = time.perf_counter()
    try:
        _train_and_evaluate(cfg, record, world, runtime, progress, out_dir)
    except ConfigError:
        finish(world)
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit from a plugin too: a fault of the run is a result
        log.error("run failed: %s\n%s", exc, traceback.format_exc())
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    finish(world)
    seal(record, start)
    if world.is_main:
        write_json_atomic(out_dir / RESULT_FILE, record)
        if record["status"] in ("completed", "diverged"):  # final: a rerun skips it, nothing to resume
            (out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    return record


def seal(record: dict[str, Any], start: float) -> dict[str, Any]:
    """``record`` with its wall time since ``start`` (a ``time.perf_counter()``) and finishing time."""
    record["wall_time_s"] = time.perf_counter() - start
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    return record


def _train_and_evaluate(
    cfg: DictConfig, record: dict[str, Any], world: World, runtime: Runtime, progress: bool, out_dir: Path
) -> None:
    data, model = prepare(cfg, runtime)
    for key in ("checkpoint_every", "save_model"):
        if cfg.train[key] and world.size > 1:
            raise ConfigError(f"train.{key}={str(cfg.train[key]).lower()}: not supported under torchrun yet")
    if isinstance(model, GAN):
        if world.size > 1:
            raise ConfigError(
                f"task={cfg.task.name}: GAN runs train in one process (got {world.size} under torchrun)"
            )
        if cfg.runtime.precision == "fp16":
            raise ConfigError(
                f"runtime.precision=fp16: task={cfg.task.name} has no gradient scaler for its two networks; "
                "use bf16 or fp32"
            )
        train_gan(cfg, record, data, model, runtime, out_dir, progress)
        return
    bs = cfg.batch_size
    if bs < world.size:
        raise ConfigError(f"batch_size={bs}: smaller than the {world.size} processes it is split across")
    plan = training_plan(cfg, len(data.x_train))  # fit_run trains by it; the record states it first
    record.update(planned_steps=plan.total, steps_per_epoch=plan.steps_per_epoch, lr=plan.lr)
    trained = parallel(model, world)
    if runtime.compile:
        trained = torch.compile(trained)
    checkpoint = (
        Checkpoint(out_dir / CHECKPOINT_FILE, cfg.train.checkpoint_every, record["config_hash"])
        if cfg.train.checkpoint_every
        else None
    )
    tracker = (
        open_tracker(cfg.logger, out_dir, record["config"], record["config_hash"], cfg.sweep.name)
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
            if cfg.train.save_model and record["status"] == "completed":
                save_weights(model, out_dir / MODEL_FILE)
            if tracker is not None:
                log_record(tracker, record, history=False)  # the history was streamed as it trained
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
    )


def augmentation(cfg: DictConfig, device: torch.device) -> Callable[[Tensor], Tensor] | None:
    """The run's training-batch augmentation (None for ``task.augment=none``), drawing from its own
    stream seeded by the run's seed, on ``device``."""
    if cfg.task.augment != "crop_flip":
        return None
    return partial(crop_flip, gen=torch.Generator(device).manual_seed(cfg.seed + 20_000))


def record_training(record: dict[str, Any], result: FitResult) -> None:
    record.update(
        status=result.status,
        steps=result.steps,
        history=result.history,
        diverged_at_step=result.diverged_at_step,
        time_per_step_s=result.train_time_s / max(1, result.steps),
    )


def record_evaluation(
    cfg: DictConfig, record: dict[str, Any], model: nn.Module, data: Dataset, runtime: Runtime
) -> None:
    """The trained model's final metrics (for a completed run) and its layers' own metrics into
    ``record``; non-finite final metrics turn a completed run into a diverged one."""
    with runtime.autocast():
        metrics = final_metrics(model, data, cfg) if record["status"] == "completed" else {}
    record_metrics(cfg, record, model, metrics)


def record_metrics(
    cfg: DictConfig, record: dict[str, Any], model: nn.Module, metrics: dict[str, Any]
) -> None:
    """``metrics`` (the final metrics, or {} for a diverged run) and the layers' own metrics of
    ``model`` into ``record``; non-finite values turn a completed run into a diverged one."""
    record["layers"] = layer_metrics(model)
    metrics.update(averaged(record["layers"], prefix=f"{cfg.norm.name}_"))
    overflowed = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if overflowed:  # the training losses stayed finite but the trained model's outputs do not
        log.warning("non-finite final metrics %s: run diverged", ", ".join(overflowed))
        record.update(
            status="diverged",
            diverged_at_step=record["steps"],
            error=f"non-finite final metrics: {', '.join(overflowed)}",
        )
        metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    record["metrics"] = metrics


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
    evaluation."""
    return members_final_metrics(OneModel(model), data, [cfg])[0]


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
    for m, c in zip(metrics, cfgs, strict=True):
        best_train = min(v for k, v in m.items() if k.startswith("train_error"))
        m["diverged"] = bool(best_train >= c.train.max_train_error_diverged)
    return metrics
