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
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from normbench.norms import NormSpec, iter_specs
from normbench.runtime import device_problem
from normbench.schema import Config, ConfigError, is_finite_number
from normbench.trackers import logger_problem


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


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: is_finite_number(v) and v >= low


def _off_or_at_least(low: float) -> Callable[[Any], bool]:
    """0 (a sentinel: none, or the run's own value) or a number >= ``low``."""
    return lambda v: is_finite_number(v) and (v == 0 or v >= low)


# key -> (test, what is allowed). Every numeric setting that could otherwise fail mid-run, be silently
# reinterpreted (a negative sample count as "all but"), or train on a nonsense value (lr = nan).
MAX_THREADS = 256  # torch's thread pools crash (segfault) on some 10^5 threads
VALUE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": (_at_least(1), "an integer >= 1"),
    "seed": (lambda v: is_finite_number(v) and 0 <= v < 2**62, "an integer in [0, 2^62)"),
    # ranges a float32 model can use: a learning rate or scale past them overflows float32 at once
    "optim.lr": (lambda v: is_finite_number(v) and 0 < v <= 1e6, "a number in (0, 1e6]"),
    "optim.momentum": (lambda v: is_finite_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "optim.weight_decay": (lambda v: is_finite_number(v) and 0 <= v <= 1e6, "a number in [0, 1e6]"),
    "optim.base_batch_size": (_at_least(1), "an integer >= 1"),
    "optim.warmup_steps": (_at_least(0), "an integer >= 0"),
    "task.model.init_scale": (
        lambda v: is_finite_number(v) and 1e-30 <= v <= 1e30,
        "a number in [1e-30, 1e30]",
    ),
    "task.model.latent": (_at_least(1), "an integer >= 1"),
    "task.model.embed": (_at_least(0), "0 (none) or an integer >= 1"),
    "task.model.norm_gain": (lambda v: is_finite_number(v) and 0 < v <= 1e6, "a number in (0, 1e6]"),
    "train.epochs": (_at_least(1), "an integer >= 1"),
    "train.steps": (_at_least(1), "an integer >= 1"),
    "train.history_points": (_at_least(1), "an integer >= 1"),
    "train.checkpoint_every": (_at_least(0), "0 (never) or a number of steps >= 1"),
    "train.max_train_error_diverged": (lambda v: is_finite_number(v) and 0 < v <= 1, "a fraction in (0, 1]"),
    "data.classes_per_batch": (_at_least(1), "an integer >= 1"),
    "data.val_size": (
        lambda v: is_finite_number(v) and (0 <= v < 1 or (v >= 1 and float(v).is_integer())),
        "a fraction in [0, 1) or a whole number of samples",
    ),
    "data.split_seed": (lambda v: is_finite_number(v) and 0 <= v < 2**62, "an integer in [0, 2^62)"),
    "data.mnist1d_samples": (_at_least(100), "an integer >= 100"),
    "data.mnist1d_test_samples": (_at_least(0), "0 or an integer >= the 20% test split"),
    "data.mnist1d_val_samples": (_off_or_at_least(2), "0 or an integer >= 2"),
    # batch statistics need two samples: one trained the whole run, then failed evaluating it
    "eval.precise_bn_samples": (_at_least(2), "an integer >= 2 (capped at the training set)"),
    "eval.precise_bn_batch_size": (_off_or_at_least(2), "an integer >= 2, or 0 for the run's batch size"),
    "eval.minibatch_samples": (_at_least(2), "an integer >= 2 (capped at the training set)"),
    "runtime.threads": (lambda v: _at_least(1)(v) and v <= MAX_THREADS, f"an integer in [1, {MAX_THREADS}]"),
    "task.model.width": (_at_least(1), "an integer >= 1"),
    "task.model.depth": (_at_least(1), "an integer >= 1"),
    "task.model.kernel_size": (_at_least(1), "an integer >= 1"),
    "task.model.heads": (_at_least(1), "an integer >= 1"),
    # ${sweep.root}/${sweep.name} is the sweep's folder: an empty root is the filesystem's root ("/default"),
    # an empty name the root itself, which MLflow refuses as an experiment name after the runs trained
    "sweep.root": (lambda v: isinstance(v, str) and v.strip() != "", "a folder (not empty)"),
    "sweep.name": (lambda v: isinstance(v, str) and v.strip() != "", "a name (not empty)"),
    # options every plugin that has them means the same by (torch's names)
    "norm.eps": (lambda v: is_finite_number(v) and 1e-30 <= v <= 1e6, "a number in [1e-30, 1e6]"),
    "norm.momentum": (
        lambda v: v is None or (is_finite_number(v) and 0 <= v <= 1),
        "a number in [0, 1] or null",
    ),
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
    problem = device_problem(OmegaConf.select(cfg, "runtime.device", default="auto"))
    if problem:
        raise ConfigError(problem)
    for key, value in cfg.norm.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"norm.{key}={_show(value)}: must be a finite number")
