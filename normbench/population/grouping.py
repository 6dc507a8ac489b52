"""Which runs of a sweep can train together as one population.

A population is K runs trained as one vectorized model (stacked parameters and buffers under
``torch.func.vmap``). Its members must build the same tensor shapes and take the same steps, so they
may differ only in :data:`MEMBER_KEYS` — settings that change values, never shapes or step counts:
the seed (initialization, data order, sampler stream), the optimizer's learning rate, momentum and
weight decay, the initial weight scale, and the divergence threshold read after training. Every other
setting of the resolved config (task, model, norm and its options, batch size, budget, schedule and
warm-up, data, evaluation, runtime) must be equal. The learning-rate schedule's shape (schedule,
warm-up, total steps) is shared; each member scales it by its own peak.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from normbench.norms import norm_spec
from normbench.results import identity_config
from normbench.tasks.registry import task_for

MEMBER_KEYS = (
    "seed",
    "optim.lr",
    "optim.momentum",
    "optim.weight_decay",
    "task.model.init_scale",
    "train.max_train_error_diverged",
)
# neither what a run computes nor how: rerun and display switches
_IGNORED = ("hydra", "sweep", "runtime.force", "runtime.progress", "data.root", "data.download")


def group_key(cfg: DictConfig) -> str:
    """What members of one population share: the resolved config without :data:`MEMBER_KEYS`."""
    return json.dumps(identity_config(cfg, (*_IGNORED, *MEMBER_KEYS)), sort_keys=True, default=str)


def why_not_population(cfg: DictConfig) -> str | None:
    """Why the run ``cfg`` cannot train inside a population (it then trains on its own), or None."""
    spec = norm_spec(cfg.norm.name)
    if not spec.population:
        return f"norm={spec.name} is not population-capable (its registry spec says population=False)"
    why = task_for(cfg).why_not_population(cfg)
    if why:
        return why
    precision = getattr(cfg.runtime.precision, "value", cfg.runtime.precision)
    if precision == "fp16":
        return "runtime.precision=fp16: one gradient scaler would skip every member's step on one member's overflow"
    for key in ("compile", "channels_last"):
        if cfg.runtime[key]:
            return f"runtime.{key}=true: not supported inside populations"
    return None


def partition(cfgs: Sequence[DictConfig], max_members: int) -> list[list[int]]:
    """Indices of ``cfgs`` in groups: runs with the same :func:`group_key` that can train as a
    population, at most ``max_members`` per group, in sweep order; every other run alone."""
    if max_members < 1:
        raise ValueError(f"hydra.launcher.max_members={max_members}: must be an integer >= 1")
    groups: dict[Any, list[list[int]]] = {}
    order: list[list[int]] = []
    for i, cfg in enumerate(cfgs):
        if why_not_population(cfg) is not None:
            order.append([i])
            continue
        chunks = groups.setdefault(group_key(cfg), [])
        if not chunks or len(chunks[-1]) == max_members:
            chunks.append([])
            order.append(chunks[-1])
        chunks[-1].append(i)
    return order


def spread(groups: Sequence[list[int]], workers: int) -> list[list[int]]:
    """``groups`` (from :func:`partition`) arranged for ``workers`` parallel workers. When there are
    fewer than twice as many groups as workers and their number is not a multiple of ``workers``,
    every group of two or more members is halved, once, so that no worker idles while one
    population trains alone (a bracketing round's single cell on two cores; three norms'
    populations on two); then the largest groups go first, so that none of them starts last.
    A member's record is its separate run's to float rounding, whatever the size of its population
    (tests/test_population_train.py)."""
    if workers < 1:
        raise ValueError(f"workers={workers}: must be an integer >= 1")
    out = [list(g) for g in groups]
    if len(out) < 2 * workers and len(out) % workers:
        out = [
            half
            for g in out
            for half in ((g[: (len(g) + 1) // 2], g[(len(g) + 1) // 2 :]) if len(g) > 1 else (g,))
        ]
    return sorted(out, key=len, reverse=True)


def member_values(cfg: DictConfig) -> dict[str, Any]:
    """The :data:`MEMBER_KEYS` of ``cfg`` (what distinguishes it inside its group)."""
    return {k: OmegaConf.select(cfg, k) for k in MEMBER_KEYS}
