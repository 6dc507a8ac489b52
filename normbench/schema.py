"""The run config's schema: typed dataclasses (no torch, no Hydra), so that
``normbench.experiment.identity`` and the report can read it without the training stack.
``normbench.config`` registers them with Hydra.

A field added after committed records existed carries ``metadata=added(before=VALUE)``: VALUE is how the
earlier runs behaved, and the key is left out of a run's identity while it holds that value, so the
earlier runs keep their config hashes (``normbench.experiment.identity.LATER_KEYS`` is generated from
these marks; a test recomputes every committed record's hash).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING


class ConfigError(ValueError):
    """A configuration that cannot give a result; raised before any training, never recorded."""


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool, which Python counts as an int) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def added(before: Any) -> dict[str, Any]:
    """Field metadata of a key added after records existed; ``before``: the value earlier runs had."""
    return {"identity_before": before}


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


class Kernels(str, Enum):
    auto = "auto"
    torch = "torch"
    fused = "fused"
    triton = "triton"
    compiled = "compiled"


class OptimName(str, Enum):
    sgd = "sgd"
    adamw = "adamw"


@dataclass
class CommonModelConfig:
    """Settings of every task's model."""

    arch: str = MISSING  # the architecture; it also chooses the task (normbench.tasks.registry)
    width: int = 64
    depth: int = 3
    # multiplies every initial weight outside the norm layers (biases untouched)
    init_scale: float = field(default=1.0, metadata=added(before=1.0))


@dataclass
class ClassifierConfig(CommonModelConfig):
    """The classification task's model settings (arch mlp, cnn1d, cnn2d, resnet2d, cifar_resnet,
    transformer, torchvision)."""

    residual: bool = False
    kernel_size: int = 3
    # conv nets: the stages after the stem (plain: conv layers 0..depth-2; residual: blocks) with stride 2
    downsample: list[int] = field(default_factory=list)
    heads: int = 4  # transformer: attention heads, dividing width
    token_layout: str = "token"
    # arch=torchvision: the torchvision classifier (torchvision.models.list_models())
    name: str = field(default="", metadata=added(before=""))
    # arch=torchvision: 3x3 stride-1 first conv and no max-pool for 32x32 inputs
    small_input: bool = field(default=True, metadata=added(before=True))


@dataclass
class RecurrentConfig(CommonModelConfig):
    """The sequence task's model settings (arch rnn: normbench.tasks.recurrent.NormRNN, width units)."""

    # lstm or gru
    cell: str = field(default="lstm", metadata=added(before="lstm"))
    # one set of norm statistics for all time steps
    shared_stats: bool = field(default=False, metadata=added(before=False))
    # each step's input mapped to this many features (linear + tanh) first; 0: none
    embed: int = field(default=0, metadata=added(before=0))
    # initial γ of the recurrent norms (Cooijmans et al. 2017 use 0.1)
    norm_gain: float = field(default=1.0, metadata=added(before=1.0))


@dataclass
class GanConfig(CommonModelConfig):
    """The GAN task's model settings (arch gan: normbench.tasks.gan.GAN)."""

    # the generator's norm ("" = the run's norm)
    g_norm: str = field(default="", metadata=added(before=""))
    # the discriminator's norm ("" = the run's norm)
    d_norm: str = field(default="", metadata=added(before=""))
    # real and fake through D as two batches or one
    d_batches: DBatches = field(default=DBatches.separate, metadata=added(before="separate"))
    # size of the generator's input noise
    latent: int = field(default=32, metadata=added(before=32))


@dataclass
class ModelConfig(ClassifierConfig, RecurrentConfig, GanConfig):
    """``task.model``: the built-in tasks' settings in one section, as the committed runs' configs (and
    config hashes) hold them; each task reads its own dataclass of them
    (:meth:`normbench.tasks.registry.Task.options`) and refuses another task's setting. A task
    plugin's own settings go in ``task.options``."""


@dataclass
class TaskConfig:
    name: str = MISSING
    dataset: str = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 10
    steps: int = 2000
    # crop_flip: 4-pixel pad + random crop, random horizontal flip
    augment: Augment = field(default=Augment.none, metadata=added(before="none"))
    # the task's main metric (what reports tabulate)
    metric: str = field(default="test_error", metadata=added(before="test_error"))
    # the main metric's direction
    lower_is_better: bool = field(default=True, metadata=added(before=True))
    # a task plugin's own settings (its options_type); the built-in tasks' are in task.model
    options: dict[str, Any] = field(default_factory=dict, metadata=added(before={}))


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
    # held out of training, stratified: a fraction < 1, a count >= 2, or 0 for none
    val_size: float = field(default=0.1, metadata=added(before=0))
    # fixes the validation split, independently of the run's seed
    split_seed: int = field(default=0, metadata=added(before=0))
    # MNIST-1D generated size (80% train, 20% test)
    mnist1d_samples: int = field(default=5000, metadata=added(before=5000))
    # MNIST-1D test set topped up to this size by new draws; 0: the 20%
    mnist1d_test_samples: int = field(default=0, metadata=added(before=0))
    # MNIST-1D validation set of this many new draws (its own seed; the training set unchanged); 0: none,
    # else data.val_size must be 0
    mnist1d_val_samples: int = field(default=0, metadata=added(before=0))
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
    force: bool = False  # rerun even when result.json holds a final record (or replace another config's)
    progress: bool = True  # a progress bar when attached to a terminal
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    # autocast dtype of forward passes; not fp32 joins the identity
    precision: Precision = field(default=Precision.fp32, metadata=added(before="fp32"))
    channels_last: bool = False  # 4-D activations stored channels-last (2-D tasks)
    compile: bool = False  # train a torch.compile-d model
    cuda_graph: bool | None = None  # capture the training step as a CUDA graph (None: where it can)
    # the norms' accelerated forms (normbench.accel): every one where it applies, the formulas alone
    # (torch), or one family; the same numbers either way, so not part of a run's identity
    kernels: Kernels = Kernels.auto


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
    logger: str = "none"  # experiment tracker: none, csv, tensorboard, mlflow, wandb (normbench.trackers)


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


def later_keys(schema: type | None = None, prefix: str = "") -> dict[str, Any]:
    """Every dotted key marked with :func:`added` in ``schema`` (default: :class:`Config`) and its
    nested sections, with the value earlier runs had."""
    schema = schema or Config
    hints = typing.get_type_hints(schema)
    found: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        if "identity_before" in f.metadata:
            found[prefix + f.name] = f.metadata["identity_before"]
        if dataclasses.is_dataclass(hints[f.name]):
            found.update(later_keys(hints[f.name], f"{prefix}{f.name}."))
    return found
