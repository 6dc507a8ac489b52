"""Structured-config schemas (Hydra ConfigStore), so a wrong type or unknown key fails before training.

The ``norm`` group is generated from the registry: one node per registered plugin, with a typed field
per option, so ``norm=<any plugin>`` and ``norm.<option>=...`` work for third-party plugins too.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from normbench.norms import NormSpec, iter_specs
from normbench.trackers import logger_problem


class Budget(str, Enum):
    epochs = "epochs"
    steps = "steps"


class LrScaling(str, Enum):
    linear = "linear"
    sqrt = "sqrt"
    none = "none"


class Schedule(str, Enum):
    cosine = "cosine"
    constant = "constant"


class Augment(str, Enum):
    none = "none"
    crop_flip = "crop_flip"


class Sampler(str, Enum):
    iid = "iid"
    class_grouped = "class_grouped"


class DBatches(str, Enum):
    separate = "separate"
    mixed = "mixed"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class OptimName(str, Enum):
    sgd = "sgd"
    adamw = "adamw"


@dataclass
class ModelConfig:
    arch: str = MISSING
    width: int = 64
    depth: int = 3
    residual: bool = False
    kernel_size: int = 3
    downsample: list[int] = field(default_factory=list)
    heads: int = 4
    token_layout: str = "token"
    name: str = ""  # arch=torchvision: the torchvision classifier (torchvision.models.list_models())
    small_input: bool = True  # arch=torchvision: 3x3 stride-1 first conv and no max-pool for 32x32 inputs
    cell: str = "lstm"  # arch=rnn: lstm or gru
    shared_stats: bool = False  # arch=rnn: one set of norm statistics for all time steps
    embed: int = 0  # arch=rnn: each step's input mapped to this many features (linear + tanh) first; 0: none
    norm_gain: float = 1.0  # arch=rnn: initial γ of the recurrent norms (Cooijmans et al. 2017 use 0.1)
    init_scale: float = 1.0  # multiplies every initial weight outside the norm layers (biases untouched)
    g_norm: str = ""  # arch=gan: the generator's norm ("" = the run's norm)
    d_norm: str = ""  # arch=gan: the discriminator's norm ("" = the run's norm)
    d_batches: DBatches = DBatches.separate  # arch=gan: real and fake through D as two batches or one
    latent: int = 32  # arch=gan: size of the generator's input noise


@dataclass
class TaskConfig:
    name: str = MISSING
    dataset: str = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 10
    steps: int = 2000
    augment: Augment = Augment.none  # crop_flip: 4-pixel pad + random crop, random horizontal flip
    metric: str = "test_error"  # the task's main metric (what reports tabulate)
    lower_is_better: bool = True  # the main metric's direction


@dataclass
class OptimConfig:
    name: OptimName = OptimName.sgd
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_scaling: LrScaling = LrScaling.linear
    base_batch_size: int = 32
    schedule: Schedule = Schedule.cosine
    warmup_steps: int = 0


@dataclass
class TrainConfig:
    budget: Budget = Budget.epochs
    epochs: int = "${task.epochs}"  # type: ignore[assignment]
    steps: int = "${task.steps}"  # type: ignore[assignment]
    history_points: int = 10  # evaluations recorded in `history` over the run (at least one per run)
    max_train_error_diverged: float = 0.85  # final train error at or above this counts as diverged
    checkpoint_every: int = 0  # save the training state every N steps (checkpoint.pt); 0: never
    save_model: bool = False  # keep the final weights (model.pt; normbench.load_model rebuilds the model)


@dataclass
class DataConfig:
    sampler: Sampler = Sampler.iid
    classes_per_batch: int = 2
    val_size: float = 0.1  # held out of training, stratified: a fraction < 1, a count >= 1, or 0 for none
    split_seed: int = 0  # fixes the validation split, independently of the run's seed
    mnist1d_samples: int = 5000  # MNIST-1D generated size (80% train, 20% test)
    mnist1d_test_samples: int = 0  # MNIST-1D test set topped up to this size by new draws; 0: the 20%
    root: str = ""  # datasets on disk (CIFAR): "" = $NORMBENCH_DATA, else ~/.cache/normbench
    download: bool = False  # fetch a missing dataset (official archive, checksum verified)


@dataclass
class EvalConfig:
    precise_bn_samples: int = 10000  # PreciseBN re-estimation budget (capped at the training set)
    precise_bn_batch_size: int = 0  # batch size of the re-estimation; 0 = the run's batch size
    minibatch_samples: int = 2000  # training samples for train_error_minibatch (the test set: all)
    batch_stats: bool = True  # the PreciseBN / mini-batch evaluations, for batch-dependent norms


@dataclass
class RuntimeConfig:
    threads: int = 1
    force: bool = False  # rerun even when result.json already holds a completed or diverged run
    progress: bool = True  # a progress bar when attached to a terminal
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    precision: Precision = Precision.fp32  # autocast dtype of forward passes; not fp32 joins the identity
    channels_last: bool = False  # 4-D activations stored channels-last (2-D tasks)
    compile: bool = False  # train a torch.compile-d model
    cuda_graph: bool | None = None  # capture the training step as a CUDA graph (None: where it can)


@dataclass
class SweepConfig:
    root: str = "multirun"
    name: str = "default"


@dataclass
class Config:
    task: TaskConfig = MISSING
    norm: Any = MISSING
    optim: OptimConfig = MISSING
    batch_size: int = 32
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    logger: str = "none"  # experiment tracker: none, csv, tensorboard (normbench.trackers)


# Settings that say where or how a run executes, not what it computes: left out of the config hash.
# Of the runtime settings only the precision changes the numbers beyond float reassociation.
NON_IDENTITY_KEYS = (
    "hydra",
    "sweep",
    *(f"runtime.{f.name}" for f in dataclasses.fields(RuntimeConfig) if f.name != "precision"),
    "data.root",
    "data.download",
    "train.checkpoint_every",
    "train.save_model",
    "logger",
)


def _omegaconf_type(tp: Any) -> Any:
    """The annotation as OmegaConf understands it (``X | None`` -> ``Optional[X]``; others -> Any)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and args[0] in (int, float, bool, str):
            return Optional[args[0]]  # noqa: UP045 - OmegaConf needs typing.Optional
        return Any
    return tp if tp in (int, float, bool, str) else Any


def norm_node(spec: NormSpec) -> Any:
    """A structured-config instance for one plugin: ``name`` plus one typed field per option."""
    fields = [("name", str, dataclasses.field(default=spec.name))]
    for opt, default in spec.options.items():
        fields.append(
            (opt, _omegaconf_type(spec.option_types.get(opt, Any)), dataclasses.field(default=default))
        )
    cls = dataclasses.make_dataclass(f"{spec.name.capitalize()}NormConfig", fields)
    return cls()


def register_configs() -> None:
    """Store the schemas and one ``norm`` option per registered plugin in Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="config", node=Config)
    for spec in iter_specs():
        cs.store(group="norm", name=spec.name, node=norm_node(spec))


class ConfigError(ValueError):
    """A configuration that cannot give a result; raised before any training, never recorded."""


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: _finite(v) and v >= low


# key -> (test, what is allowed). Every numeric setting that could otherwise fail mid-run, be silently
# reinterpreted (a negative sample count as "all but"), or train on a nonsense value (lr = nan).
MAX_THREADS = 256  # torch's thread pools crash (segfault) on some 10^5 threads
VALUE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": (_at_least(1), "an integer >= 1"),
    "seed": (lambda v: _finite(v) and 0 <= v < 2**62, "an integer in [0, 2^62)"),
    # ranges a float32 model can use: a learning rate or scale past them overflows float32 at once
    "optim.lr": (lambda v: _finite(v) and 0 < v <= 1e6, "a number in (0, 1e6]"),
    "optim.momentum": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "optim.weight_decay": (lambda v: _finite(v) and 0 <= v <= 1e6, "a number in [0, 1e6]"),
    "optim.base_batch_size": (_at_least(1), "an integer >= 1"),
    "optim.warmup_steps": (_at_least(0), "an integer >= 0"),
    "task.model.init_scale": (lambda v: _finite(v) and 1e-30 <= v <= 1e30, "a number in [1e-30, 1e30]"),
    "task.model.latent": (_at_least(1), "an integer >= 1"),
    "task.model.embed": (_at_least(0), "0 (none) or an integer >= 1"),
    "task.model.norm_gain": (lambda v: _finite(v) and 0 < v <= 1e6, "a number in (0, 1e6]"),
    "train.epochs": (_at_least(1), "an integer >= 1"),
    "train.steps": (_at_least(1), "an integer >= 1"),
    "train.history_points": (_at_least(1), "an integer >= 1"),
    "train.checkpoint_every": (_at_least(0), "0 (never) or a number of steps >= 1"),
    "train.max_train_error_diverged": (lambda v: _finite(v) and 0 < v <= 1, "a fraction in (0, 1]"),
    "data.classes_per_batch": (_at_least(1), "an integer >= 1"),
    "data.val_size": (
        lambda v: _finite(v) and (0 <= v < 1 or (v >= 1 and float(v).is_integer())),
        "a fraction in [0, 1) or a whole number of samples",
    ),
    "data.split_seed": (lambda v: _finite(v) and 0 <= v < 2**62, "an integer in [0, 2^62)"),
    "data.mnist1d_samples": (_at_least(100), "an integer >= 100"),
    "data.mnist1d_test_samples": (_at_least(0), "0 or an integer >= the 20% test split"),
    "eval.precise_bn_samples": (_at_least(1), "an integer >= 1 (capped at the training set)"),
    "eval.precise_bn_batch_size": (_at_least(0), "an integer >= 1, or 0 for the run's batch size"),
    "eval.minibatch_samples": (_at_least(1), "an integer >= 1 (capped at the training set)"),
    "runtime.threads": (lambda v: _at_least(1)(v) and v <= MAX_THREADS, f"an integer in [1, {MAX_THREADS}]"),
    "task.model.width": (_at_least(1), "an integer >= 1"),
    "task.model.depth": (_at_least(1), "an integer >= 1"),
    "task.model.kernel_size": (_at_least(1), "an integer >= 1"),
    "task.model.heads": (_at_least(1), "an integer >= 1"),
    # options every plugin that has them means the same by (torch's names)
    "norm.eps": (lambda v: _finite(v) and 1e-30 <= v <= 1e6, "a number in [1e-30, 1e6]"),
    "norm.momentum": (lambda v: v is None or (_finite(v) and 0 <= v <= 1), "a number in [0, 1] or null"),
}


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def check_values(cfg: DictConfig) -> None:
    """Refuse a bad setting before any work: raises ConfigError naming the key, the value and what is
    allowed. Also refuses keys the schema does not have (``+foo=1``) and non-finite float options of
    the norm plugin."""
    known = {f.name for f in dataclasses.fields(Config)} | {"hydra"}
    for key in cfg:
        if key not in known:
            raise ConfigError(f"{key}: unknown key (allowed: {', '.join(sorted(known - {'hydra'}))})")
    for key, (ok, allowed) in VALUE_RULES.items():
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            continue
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}={_show(value)}: must be {allowed}")
    problem = logger_problem(str(OmegaConf.select(cfg, "logger", default="none")))
    if problem:
        raise ConfigError(problem)
    from normbench.runtime import device_problem  # runtime needs ConfigError from here

    problem = device_problem(OmegaConf.select(cfg, "runtime.device", default="auto"))
    if problem:
        raise ConfigError(problem)
    for key, value in cfg.norm.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"norm.{key}={_show(value)}: must be a finite number")
