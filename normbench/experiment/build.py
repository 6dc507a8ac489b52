"""What a run is built from: its runtime, its data split and its model with the configured norms, each
checked before any training (a setting that cannot work raises ConfigError)."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from normbench.accel import use_kernels
from normbench.checkpoint import MODEL_FILE, load_weights
from normbench.config import ConfigError
from normbench.evaluate import eval_mode
from normbench.experiment.identity import record_config
from normbench.norms import norm_spec
from normbench.results import (
    RESULT_FILE,
    load_run,
)
from normbench.runtime import CPU_FP32, Runtime, resolve_device, use_deterministic_kernels
from normbench.samplers import check_class_grouped, class_grouped_batches, iid_batches, iid_epochs
from normbench.tasks.cifar import crop_flip
from normbench.tasks.dataset import Dataset
from normbench.tasks.models import ModelConfigError, scale_initial_weights
from normbench.tasks.registry import task_for
from normbench.train import training_plan

log = logging.getLogger(__name__)


def setup_runtime(cfg: DictConfig) -> Runtime:
    """The run's device and arithmetic (ConfigError if this machine cannot give them), the norms'
    accelerated forms its modules take, threads, deterministic kernels and the seed."""
    runtime = Runtime.from_config(cfg.runtime)
    use_kernels(runtime.kernels)
    torch.set_num_threads(cfg.runtime.threads)
    use_deterministic_kernels(runtime.device, compiles=runtime.compile)
    torch.manual_seed(cfg.seed)
    return runtime


class PluginError(RuntimeError):
    """A norm plugin broke its contract (e.g. returned a tensor of another shape): a failed run."""


def model_and_norms(cfg: DictConfig, data: Dataset) -> tuple[nn.Module, list[nn.Module]]:
    """The model of the run's task (:func:`normbench.tasks.registry.task_for`) with the configured norm,
    and the norm layers the registry built for it; initial weights scaled by ``task.model.init_scale``.
    A norm whose schedule follows the run's length (``set_training_steps``) is given it."""
    model, built = task_for(cfg).build_model(cfg, data)
    init_scale = cfg.task.model.get("init_scale", 1.0)
    if init_scale != 1.0:
        scale_initial_weights(model, init_scale, built)
    timed = [m for m in built if hasattr(m, "set_training_steps")]
    if timed:
        total = training_plan(cfg, len(data.x_train)).total
        for m in timed:
            m.set_training_steps(total)
    return model, built


def model_from_config(cfg: DictConfig, data: Dataset) -> nn.Module:
    return model_and_norms(cfg, data)[0]


def load_model(run_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """The model a run trained, in eval mode: rebuilt from the config in its ``result.json`` and loaded
    with the weights ``train.save_model=true`` kept in ``model.pt`` (read with ``weights_only=True``).

    Raises:
        FileNotFoundError: ``run_dir`` is not a run's folder, or its run kept no weights (saying why:
            not asked to, or not completed).
        ValueError: ``model.pt`` is not a state dict of the run's model."""
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"load_model takes a run's folder (a str or path), got {run_dir!r}")
    device = device if isinstance(device, torch.device) else resolve_device(device, "device")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "does not exist"
        raise FileNotFoundError(f"{run_dir}: {what}; give a run's folder (the one holding {RESULT_FILE})")
    if not (run_dir / RESULT_FILE).exists():
        raise FileNotFoundError(f"{run_dir}: holds no {RESULT_FILE}, so it is not a run's folder")
    record = load_run(run_dir / RESULT_FILE)
    weights = run_dir / MODEL_FILE
    if not weights.is_file():
        if record["status"] != "completed":
            why = f"the run's status is {record['status']}; the weights of completed runs alone are kept"
        elif not record["config"]["train"].get("save_model"):
            why = "train the run with train.save_model=true"
        else:
            why = "the run kept them; the file was removed or moved since"
        raise FileNotFoundError(f"{weights}: no saved weights ({why})")
    cfg = record_config(record["config"])
    model = model_from_config(cfg, split_data(cfg))  # the run's model, not a new run's checks
    load_weights(model, weights)
    return model.to(device).eval()


def _same_shape(module: nn.Module, inputs: tuple[Tensor, ...], output: Any) -> None:
    if not isinstance(output, Tensor) or output.shape != inputs[0].shape:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise PluginError(
            f"norm plugin {type(module).__name__} returned {got} for an input of shape {tuple(inputs[0].shape)}"
        )


def hooked_forward(
    model: nn.Module, modules: Iterable[nn.Module], hook: Callable[..., Any], x: Tensor
) -> None:
    """One eval-mode forward of ``x`` without gradients (state untouched), with the forward ``hook`` on
    each of ``modules`` for its duration."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()


def dry_forward(model: nn.Module, norms: list[nn.Module], x: Tensor) -> None:
    """One eval-mode forward that checks every norm layer returns the shape it was given: shape
    problems surface before training."""
    hooked_forward(model, norms, _same_shape, x)


def training_forward(model: nn.Module, x: Tensor, cfg: DictConfig) -> None:
    """A training-mode forward of one batch ``x`` of the run's size on a copy (the global random state
    as it was): a batch-dependent norm that cannot normalize it - one value per channel at batch size 1
    (features, gate pre-activations), a ghost batch of one sample - cannot train there."""
    try:
        with torch.no_grad(), torch.random.fork_rng():
            copy.deepcopy(model).train()(x)
    except ValueError as exc:
        if len(x) == 1:
            raise ConfigError(
                f"batch_size=1: norm={cfg.norm.name} normalizes over the samples of a batch, which one "
                f"sample cannot give in task={cfg.task.name} ({exc}); use a batch-independent norm such "
                "as layernorm"
            ) from None
        raise ConfigError(
            f"norm={cfg.norm.name} cannot train task={cfg.task.name} at batch_size={cfg.batch_size}: {exc}"
        ) from None


def split_data(cfg: DictConfig) -> Dataset:
    """The run's data split (train/validation/test, on the CPU); ConfigError where the dataset or the
    split cannot be had."""
    try:
        data = task_for(cfg).load_data(cfg)
    except (OSError, ValueError) as exc:  # unknown, missing (without data.download), bad download
        raise ConfigError(f"task.dataset={cfg.task.dataset}: {exc}") from None
    try:
        return data.split(cfg.data.val_size, cfg.data.split_seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def prepare_data(cfg: DictConfig, runtime: Runtime = CPU_FP32) -> Dataset:
    """The run's data split (:func:`split_data`), after the checks of training on it: a setting the
    task cannot give (a batch larger than the training set, a class-grouped batch the classes cannot
    fill, an image-only setting on 1-D inputs, a warm-up as long as the run) raises ConfigError."""
    data = split_data(cfg)
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
        split = cfg.data.val_size and data.y_val is not None  # held out of the training set
        left = (
            f" (what data.val_size={cfg.data.val_size} leaves of {n_train + len(data.y_val)})"
            if split
            else ""
        )
        raise ConfigError(f"batch_size={bs}: must be between 1 and the training set size {n_train}{left}")
    if cfg.data.sampler == "class_grouped":
        why = check_class_grouped(bs, cfg.data.classes_per_batch, data.num_classes)
        if why:
            raise ConfigError(why)
    total = training_plan(cfg, n_train).total
    if cfg.optim.warmup_steps >= total > 0:  # the whole run would be warm-up, the schedule never applied
        raise ConfigError(
            f"optim.warmup_steps={cfg.optim.warmup_steps}: must be fewer than the run's {total} training "
            f"steps (batch_size={bs}, train.budget={getattr(cfg.train.budget, 'value', cfg.train.budget)}); "
            "the run would end before its warm-up does"
        )
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
        if norm_spec(cfg.norm.name).batch_dependent:
            training_forward(model, data.x_train[:bs], cfg)
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


def batch_iterator(cfg: DictConfig, data: Dataset, gen: torch.Generator) -> Iterator[Tensor]:
    """The run's training batches (index tensors), one by one, drawn from ``gen``."""
    if cfg.data.sampler == "class_grouped":
        return class_grouped_batches(data.y_train, cfg.batch_size, cfg.data.classes_per_batch, gen)
    return iid_batches(len(data.x_train), cfg.batch_size, gen)


def epoch_iterator(cfg: DictConfig, data: Dataset, gen: torch.Generator) -> Iterator[Tensor] | None:
    """The same batches as :func:`batch_iterator`, an epoch at a time ((batches, batch_size) tensors),
    where the sampler draws whole epochs of one length (i.i.d.); None where it does not."""
    if cfg.data.sampler == "class_grouped":
        return None
    return iid_epochs(len(data.x_train), cfg.batch_size, gen)


def augmentation(cfg: DictConfig, device: torch.device) -> Callable[[Tensor], Tensor] | None:
    """The run's training-batch augmentation (None for ``task.augment=none``), drawing from its own
    stream seeded by the run's seed, on ``device``."""
    if cfg.task.augment != "crop_flip":
        return None
    return partial(crop_flip, gen=torch.Generator(device).manual_seed(cfg.seed + 20_000))
