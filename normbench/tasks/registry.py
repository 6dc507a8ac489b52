"""The registry of tasks: what a run trains (its data, its model, the loss and error of a batch) behind
one interface, as :mod:`normbench.norms.registry` holds the norms.

A task is a :class:`Task` subclass registered under a name with :func:`register_task`. A run's task
is the registered task that builds its ``task.model.arch`` (each task names the archs it builds).
Built-in tasks: classification, sequence (recurrent nets) and gan; third-party packages add theirs
through the ``normbench.tasks`` entry-point group, loaded on the first use of the registry.

The loops, the populations and the evaluations call the task and never ask which one it is: a
training step minimizes :meth:`Task.loss` of a batch, every evaluation averages
:meth:`Task.sample_errors` and :meth:`Task.sample_losses`, and a task with its own training loop
(the GAN's two networks) gives it as :meth:`Task.train`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from normbench.norms import norm_spec
from normbench.schema import CommonModelConfig, ConfigError, ModelConfig
from normbench.tasks.data import load_dataset
from normbench.tasks.dataset import Dataset
from normbench.tasks.norm_layers import NormLayers

if TYPE_CHECKING:
    from pathlib import Path

    from normbench.experiment.record import RunRecord
    from normbench.runtime import Runtime

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "normbench.tasks"
# the built-in tasks' modules, imported by name on the registry's first use
BUILTIN_MODULES = (
    "normbench.tasks.classification",
    "normbench.tasks.sequence",
    "normbench.tasks.adversarial",
)


class Task:
    """What a run trains, behind the one interface the loops, populations and evaluations call.

    Subclasses set :attr:`archs` (the ``task.model.arch`` values they build) and :attr:`options_type` (a dataclass of their own settings, read by :meth:`options`), and
    implement :meth:`build_model`, :meth:`sample_losses` and :meth:`sample_errors`. A batch is
    ``(inputs, labels)`` as the task's :class:`~normbench.tasks.dataset.Dataset` holds them; what a
    model returns for it is the task's business (logits, a reconstruction, ...). The *error* of a
    sample is the task's own measure, lower is better (classification: 0 or 1; a reconstruction:
    its squared error, with :attr:`error_is_fraction` False): reports call its mean ``test_error``,
    ``val_error`` and so on.
    """

    name: ClassVar[str] = ""  # set by register_task
    archs: ClassVar[tuple[str, ...]] = ()
    options_type: ClassVar[type | None] = None
    # own training loop, instead of minimizing loss() with the run's optimizer (see train())
    own_training: ClassVar[bool] = False
    # ... and a population form of that loop (see train_population())
    population_training: ClassVar[bool] = False
    # a sample's error is 0 or 1, so mean errors are fractions in [0, 1] (records are checked so)
    error_is_fraction: ClassVar[bool] = True

    def options(self, cfg: DictConfig) -> Any:
        """This task's settings of the run ``cfg`` as its :attr:`options_type`: read from
        ``task.model`` when that is a :class:`~normbench.schema.CommonModelConfig` (the built-in tasks),
        else from ``task.options``. ConfigError names a key it does not have, or a setting of another
        task's model."""
        section = cfg.task.get("options")  # absent from a config composed without the schema
        given = {} if not section else OmegaConf.to_container(section, resolve=True, enum_to_str=True)
        kind = self.options_type
        if kind is not None and issubclass(kind, CommonModelConfig):
            if given:
                raise ConfigError(
                    f"task.options.{next(iter(given))}: task kind {self.name!r} takes its settings in task.model"
                )
            return _model_options(self, cfg, kind)
        return read_options(self, "task.options", given)

    def model_reads(self, arch: str) -> tuple[str, ...]:
        """The ``task.model`` settings the model of ``arch`` is built from (besides ``arch``; the run
        applies ``init_scale``), for tasks whose :attr:`options_type` is a
        :class:`~normbench.schema.CommonModelConfig`: another one set away from its default is refused
        (it would change the config hash and nothing else). Every field of the dataclass by default."""
        return tuple(
            f.name for f in dataclasses.fields(self.options_type) if f.name not in ("arch", "init_scale")
        )

    def check(self, cfg: DictConfig) -> None:
        """Refuse (ConfigError) a setting of ``cfg`` this task cannot train, before anything is built.
        The base class reads the task's settings (:meth:`options`), so an unknown one is refused here."""
        self.options(cfg)

    def load_data(self, cfg: DictConfig) -> Dataset:
        """The run's dataset, before the validation split (``task.dataset`` from
        :func:`normbench.tasks.data.load_dataset`). Errors: ValueError or OSError, with the reason."""
        return load_dataset(
            cfg.task.dataset,
            cfg.data.root,
            cfg.data.download,
            cfg.data.mnist1d_samples,
            cfg.data.mnist1d_test_samples,
            cfg.data.get("mnist1d_val_samples", 0),
        )

    def build_model(self, cfg: DictConfig, data: Dataset) -> tuple[nn.Module, list[nn.Module]]:
        """The model of the run ``cfg`` for ``data``, and every norm layer it holds (in the order
        built). Norms come from the registry through :func:`norm_layers`."""
        raise NotImplementedError

    def sample_losses(self, outputs: Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
        """The training loss of each sample (N,) of a batch, given the model's ``outputs``."""
        raise NotImplementedError

    def sample_errors(self, outputs: Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
        """The error of each sample (N,), a float or bool tensor."""
        raise NotImplementedError

    def loss(self, outputs: Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
        """The loss one training step minimizes: the batch's mean :meth:`sample_losses`."""
        return self.sample_losses(outputs, inputs, labels).mean()

    def metrics(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        """The task's own final metrics of the trained ``model`` (in eval mode, without gradients),
        added to the record's ``metrics`` beside the errors and losses every task gets; none by default."""
        return {}

    def metric_names(self, cfg: DictConfig) -> frozenset[str] | None:
        """The metrics every run ``cfg`` of this task records, one of which ``task.metric`` must name
        (checked before training: a main metric no run records would leave every record out of the
        report); None where they are known only once trained - the base's answer for a task with its
        own training loop, :meth:`metrics` or :meth:`load_data` (which may bring a validation set),
        unless it overrides this to name them (e.g. ``shared_metrics(cfg) | {"test_snr_db"}``). The
        base: :func:`shared_metrics`."""
        own = type(self).metrics is not Task.metrics or type(self).load_data is not Task.load_data
        return None if self.own_training or own else shared_metrics(cfg)

    def why_not_population(self, cfg: DictConfig) -> str | None:
        """Why the run ``cfg`` of this task cannot train inside a population, or None."""
        if self.own_training and not self.population_training:
            return f"task={cfg.task.name}: the {self.name} task trains with its own loop, one run at a time"
        return None

    def train(
        self,
        cfg: DictConfig,
        record: RunRecord,
        data: Dataset,
        model: nn.Module,
        runtime: Runtime,
        out_dir: Path,
        progress: bool,
    ) -> None:
        """For :attr:`own_training` tasks: train ``model`` and fill ``record`` (status, history,
        metrics); called instead of the shared loop (:func:`normbench.experiment.run.execute`)."""
        raise NotImplementedError(f"task {self.name!r} has no training loop of its own")

    def train_population(
        self,
        cfgs: Sequence[DictConfig],
        records: Sequence[RunRecord],
        data: Dataset,
        models: Sequence[nn.Module],
        runtime: Runtime,
        out_dirs: Sequence[Path],
        progress: bool,
        form: str,
    ) -> str:
        """For :attr:`own_training` tasks with :attr:`population_training`: train ``models`` (one per
        config of a population group, see :mod:`normbench.population.grouping`) together, fill each
        member's record as :meth:`train` would for its run alone, and return the population form used
        (``wide`` or ``vmap``; ``form`` asks for one, as :func:`normbench.population.wide.stack_population`)."""
        raise NotImplementedError(f"task {self.name!r} has no population form of its training loop")


def untrainable_norm(setting: str, name: str) -> str | None:
    """Why a run cannot train the norm ``name`` chosen by ``setting`` from scratch, or None: one whose
    statistics nothing estimates (:attr:`NormSpec.frozen_statistics`)."""
    if not norm_spec(name).frozen_statistics:
        return None
    return (
        f"{setting}={name}: normalizes with running statistics that training never updates, so a run "
        "trained from scratch keeps their initial values (mean 0, variance 1), a fixed scale; it is for "
        "the BatchNorms of a trained model (normbench.convert_norms); norm=identity trains without a norm"
    )


def norm_layers(cfg: DictConfig, name: str = "") -> NormLayers:
    """The registry's norms for the run ``cfg``: ``name`` (default ``norm.name``) with the run's norm
    options when it is the run's norm, the plugin's defaults otherwise."""
    options = {k: v for k, v in OmegaConf.to_container(cfg.norm, resolve=True).items() if k != "name"}
    if not name or norm_spec(name).name == norm_spec(cfg.norm.name).name:
        return NormLayers(cfg.norm.name, options)
    return NormLayers(name)


def _model_options(task: Task, cfg: DictConfig, kind: type) -> Any:
    """``task.model`` read into ``kind``. A setting the arch's model is not built from (one of another
    task's model, or of this task's that :meth:`Task.model_reads` leaves out) set away from its default
    (the schema fills every built-in task's fields) raises ConfigError naming the settings it reads."""
    model = OmegaConf.to_container(cfg.task.model, resolve=True, enum_to_str=True)
    own = {f.name for f in dataclasses.fields(kind)}
    reads = (*task.model_reads(model["arch"]), "init_scale")
    defaults = OmegaConf.to_container(OmegaConf.structured(ModelConfig), enum_to_str=True)
    for key, value in model.items():
        if key in (*reads, "arch") or key not in defaults or value == defaults[key]:
            continue
        if key in own:
            raise ConfigError(
                f"task.model.{key}={value}: arch={model['arch']} does not use it (its settings: {', '.join(reads)})"
            )
        raise ConfigError(
            f"task.model.{key}={value}: not a setting of task kind {task.name!r} "
            f"(arch={model['arch']}); its settings: {', '.join(reads)}"
        )
    return kind(**{k: v for k, v in model.items() if k in own})


def read_options(task: Task, where: str, given: Mapping[str, Any]) -> Any:
    """``given`` read into ``task.options_type`` (None when the task has none): a key it lacks raises
    ConfigError naming ``where.key`` and the keys it has."""
    kind = task.options_type
    if kind is None:
        if given:
            raise ConfigError(f"{where}: task kind {task.name!r} takes no options (got {', '.join(given)})")
        return None
    names = [f.name for f in dataclasses.fields(kind)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: not a setting of task kind {task.name!r}; its settings: {', '.join(names)}"
        )
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(kind), given))
    except OmegaConfBaseException as exc:  # a value of the wrong type
        key = getattr(exc, "full_key", "") or ""
        shown = f"{where}.{key}={given.get(key)}" if key in given else where
        raise ConfigError(f"{shown}: {str(exc).splitlines()[0]}") from None


T = TypeVar("T", bound=type[Task])


class _Registry:
    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._loaded = False
        self._loading = threading.RLock()
        self.plugin_errors: dict[str, str] = {}

    def add(self, task: Task, override: bool) -> None:
        if type(task).__module__ not in BUILTIN_MODULES:  # a built-in's name and archs are taken before
            self.tasks()  # they load (a built-in does not load them: imported alone, it is half-initialized)
        if task.name in self._tasks and not override:
            owner = type(self._tasks[task.name])
            raise ValueError(
                f"task kind {task.name!r} is already registered by {owner.__module__}.{owner.__qualname__}; "
                "pass override=True to replace it"
            )
        for other in self._tasks.values():
            taken = set(task.archs) & set(other.archs)
            if taken and other.name != task.name:
                raise ValueError(
                    f"task kind {task.name!r}: arch {sorted(taken)[0]!r} is already built by task kind "
                    f"{other.name!r} (a run's arch must resolve to one task)"
                )
        self._tasks[task.name] = task

    def tasks(self) -> dict[str, Task]:
        if not self._loaded:
            with self._loading:
                if not self._loaded:
                    self._loaded = True
                    for module in BUILTIN_MODULES:
                        importlib.import_module(module)
                    for ep in entry_points(group=ENTRY_POINT_GROUP):
                        try:
                            ep.load()
                        except Exception as exc:  # a broken third-party task must not break the rest
                            self.plugin_errors[ep.name] = f"{type(exc).__name__}: {exc}"
                            log.warning("normbench: task entry point %r failed to load: %s", ep.name, exc)
        return self._tasks


REGISTRY = _Registry()


def shared_metrics(cfg: DictConfig) -> frozenset[str]:
    """The metrics every run ``cfg`` of a task on the shared training loop records, whatever its norm:
    the errors and losses on the test and training sets, and on the validation set where there is
    one (``data.val_size``, or MNIST-1D's ``data.mnist1d_val_samples``), and the generalization gap.
    (The PreciseBN and mini-batch evaluations are recorded for batch-dependent norms only.)"""
    splits = ["test", "train"]
    if cfg.data.val_size or cfg.data.get("mnist1d_val_samples", 0):
        splits.append("val")
    return frozenset({f"{s}_{kind}" for s in splits for kind in ("error", "loss")} | {"generalization_gap"})


def register_task(name: str, cls: type[Task] | None = None, *, override: bool = False) -> Any:
    """Register a :class:`Task` subclass under ``name``: as a decorator, or called with the class (one
    defined elsewhere), returning it either way; one instance serves every run.

    Example::

        @register_task("autoencoder")
        class Autoencoder(Task):
            options_type = AutoencoderOptions
            def build_model(self, cfg, data): ...
            def sample_losses(self, outputs, inputs, labels): ...
            def sample_errors(self, outputs, inputs, labels): ...
    """
    if not (isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_]*", name)):
        raise ValueError(
            f"task kind {name!r} must be lower case letters, digits and '_' (e.g. 'autoencoder')"
        )

    def decorator(task_class: T) -> T:
        if not (isinstance(task_class, type) and issubclass(task_class, Task)):
            raise TypeError(f"register_task({name!r}) registers a Task subclass, got {task_class!r}")
        problem = _definition_problem(task_class)
        if problem:
            raise TypeError(f"register_task({name!r}): {task_class.__qualname__}.{problem}")
        task_class.name = name
        REGISTRY.add(task_class(), override)
        return task_class

    return decorator if cls is None else decorator(cls)


def _definition_problem(cls: type[Task]) -> str | None:
    """What keeps the Task subclass ``cls`` from training a run, or None: the class attributes the
    registry and the loops read, and the methods its kind of training calls."""
    archs = cls.archs
    if not (isinstance(archs, (tuple, list)) and archs and all(isinstance(a, str) and a for a in archs)):
        return f"archs must be a non-empty tuple of the task.model.arch names it builds, got {archs!r}"
    kind = cls.options_type
    if kind is not None and not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
        return f"options_type must be a dataclass or None, got {kind!r}"
    for flag in ("own_training", "population_training", "error_is_fraction"):
        if not isinstance(getattr(cls, flag), bool):
            return f"{flag} must be True or False, got {getattr(cls, flag)!r}"
    needed = ["build_model"]
    if cls.own_training:
        needed += ["train", "train_population"] if cls.population_training else ["train"]
    else:
        needed += ["sample_losses", "sample_errors"]
    missing = [method for method in needed if getattr(cls, method) is getattr(Task, method)]
    if missing:
        which = "with" if cls.own_training else "without"
        return f"{missing[0]} is not implemented (a task {which} own_training implements {', '.join(needed)})"
    return None


def available_tasks() -> list[str]:
    """The registered task kinds, sorted."""
    return sorted(REGISTRY.tasks())


def get_task(kind: str) -> Task:
    """The task registered as ``kind`` (KeyError naming the registered kinds and the closest one)."""
    tasks = REGISTRY.tasks()
    if kind in tasks:
        return tasks[kind]
    close = difflib.get_close_matches(kind, list(tasks), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    broken = (
        f" (task plugins that failed to load: {', '.join(sorted(REGISTRY.plugin_errors))})"
        if REGISTRY.plugin_errors
        else ""
    )
    raise KeyError(f"unknown task kind {kind!r}.{hint} Registered: {', '.join(sorted(tasks))}{broken}")


def task_for(cfg: DictConfig) -> Task:
    """The task of the run ``cfg``: the registered task that builds ``task.model.arch`` (ConfigError
    naming the value and the archs registered tasks build)."""
    arch = cfg.task.model.arch
    builders = {a: t for t in REGISTRY.tasks().values() for a in t.archs}
    if arch not in builders:
        raise ConfigError(
            f"task.model.arch={arch}: no registered task builds it; archs: {', '.join(sorted(builders))}"
        )
    return builders[arch]
