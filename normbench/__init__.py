"""normbench: compare normalization layers in PyTorch.

Public API: :func:`build_norm`, :func:`register_norm`, :func:`available_norms`, :func:`norm_spec`;
:class:`Task`, :func:`register_task` and :func:`available_tasks` for tasks; the :class:`ChannelLast`
adapter for (N, L, C) token tensors, :func:`convert_norms` for any model, :func:`diagnose` for any
model's batch statistics, and :func:`load_model` for a run's saved weights. They are imported on first
access, so ``normbench.report`` (pandas and matplotlib only) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from normbench.version import __version__

__all__ = [
    "ChannelLast",
    "NormSpec",
    "Task",
    "__version__",
    "available_norms",
    "available_tasks",
    "build_norm",
    "convert_norms",
    "diagnose",
    "load_model",
    "norm_spec",
    "register_norm",
    "register_task",
]

if TYPE_CHECKING:
    from normbench.convert import convert_norms
    from normbench.diagnosis import diagnose
    from normbench.experiment.build import load_model
    from normbench.norms import ChannelLast, NormSpec, available_norms, build_norm, norm_spec, register_norm
    from normbench.tasks.registry import Task, available_tasks, register_task


_FUNCTIONS = {
    "convert_norms": "normbench.convert",
    "diagnose": "normbench.diagnosis",
    "load_model": "normbench.experiment.build",
    "Task": "normbench.tasks.registry",
    "available_tasks": "normbench.tasks.registry",
    "register_task": "normbench.tasks.registry",
}


def __getattr__(name: str) -> Any:
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[name]), name)
    if name in __all__:
        return getattr(importlib.import_module("normbench.norms"), name)
    raise AttributeError(f"module 'normbench' has no attribute {name!r}")
