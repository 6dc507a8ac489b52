"""Accelerated forms of the built-in plugins, kept beside their formulas, and the one setting that
chooses them (``runtime.kernels``).

Each plugin file in :mod:`normbench.norms` holds its torch formula only. A *kernel* here computes the
same numbers faster on some inputs, and is registered per plugin class with :func:`register_kernel`:

- ``fused`` (:mod:`normbench.accel.cpu`): ``torch.autograd.Function`` s with hand-derived backwards and
  blocked loops, for large CPU inputs (where every fresh activation-sized tensor costs page faults);
  and GroupNorm/LayerNorm on CPU (N, C) features through torch's ``layer_norm`` kernel
  (:mod:`normbench.accel.group_norms`);
- ``triton`` (:mod:`normbench.accel.planes`, :mod:`normbench.accel._triton`,
  :mod:`normbench.accel._triton_switch`): Triton kernels on CUDA, two launches per direction;
- ``compiled`` (:mod:`normbench.accel.compiled`): the plugin's own formula through ``torch.compile`` on
  CUDA (no second copy of the math).

``runtime.kernels`` (:data:`KERNEL_SETTINGS`): ``auto`` every form where it applies, ``torch`` the
formulas alone, or one family alone. A module reads the setting once, when it is built
(:func:`kernels_for`); runs set it before building their model and record it in ``env``. Tests tie each
form to its plugin's formula: tests/test_kernels.py (fused), tests/test_planes.py (triton, through
Triton's interpreter), tests/test_conformance.py (both ways over every plugin).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

KERNEL_FAMILIES = ("fused", "triton", "compiled")
KERNEL_SETTINGS = ("auto", "torch", *KERNEL_FAMILIES)
# the per-plugin registrations, imported by name on first use (they import the plugins they accelerate)
KERNEL_MODULES = (
    "normbench.accel.batchrenorm",
    "normbench.accel.evonorm",
    "normbench.accel.frn",
    "normbench.accel.ghost_batchnorm",
    "normbench.accel.group_norms",
    "normbench.accel.rmsnorm",
    "normbench.accel.switchnorm",
)


@dataclass(frozen=True)
class Kernel:
    """An accelerated form of ``plugin``'s forward: ``forward(module, x)`` returns what the plugin's
    formula would (output, gradients and buffer updates alike) wherever ``applies(module, x)``."""

    plugin: type
    family: str
    applies: Callable[[Any, Any], bool]
    forward: Callable[[Any, Any], Any]


_KERNELS: dict[type, list[Kernel]] = {}
_state = {"setting": "auto", "loaded": False}
_loading = threading.RLock()


def register_kernel(plugin: type, family: str, applies: Callable[[Any, Any], bool]) -> Callable:
    """Register the decorated ``forward(module, x)`` as ``plugin``'s ``family`` form where ``applies``."""
    if family not in KERNEL_FAMILIES:
        raise ValueError(f"kernel family {family!r}: allowed are {', '.join(KERNEL_FAMILIES)}")

    def decorator(forward: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        _KERNELS.setdefault(plugin, []).append(Kernel(plugin, family, applies, forward))
        return forward

    return decorator


def _ensure_loaded() -> None:
    if not _state["loaded"]:
        with _loading:
            if not _state["loaded"]:
                _state["loaded"] = True
                for module in KERNEL_MODULES:
                    importlib.import_module(module)


def registered_kernels() -> list[Kernel]:
    """Every registered kernel, whatever the setting."""
    _ensure_loaded()
    return [k for kernels in _KERNELS.values() for k in kernels]


def check_setting(setting: str) -> str:
    """``setting`` if it is one of :data:`KERNEL_SETTINGS`; ValueError naming it and the allowed ones."""
    if setting not in KERNEL_SETTINGS:
        raise ValueError(f"runtime.kernels={setting}: must be one of {', '.join(KERNEL_SETTINGS)}")
    return setting


def use_kernels(setting: str) -> None:
    """Choose the accelerated forms that modules built from now on take (``runtime.kernels``)."""
    _state["setting"] = check_setting(str(getattr(setting, "value", setting)))


def kernels_setting() -> str:
    return _state["setting"]


@contextmanager
def kernels(setting: str) -> Iterator[None]:
    """Modules built inside the block take ``setting``'s forms (the previous setting after it)."""
    previous = kernels_setting()
    use_kernels(setting)
    try:
        yield
    finally:
        use_kernels(previous)


def allows(family: str) -> bool:
    """Whether the current setting takes the ``family`` form."""
    return kernels_setting() in ("auto", family)


def kernels_for(plugin: type) -> tuple[Kernel, ...]:
    """The forms that the current setting takes of ``plugin``, or of its nearest base class with
    registered forms (a subclass that keeps its base's formula keeps its kernels)."""
    if kernels_setting() == "torch":
        return ()
    _ensure_loaded()
    registered = next((_KERNELS[cls] for cls in plugin.__mro__ if cls in _KERNELS), [])
    return tuple(k for k in registered if allows(k.family))


def choose_kernels(module: Any, setting: str | None = None) -> Any:
    """Choose again, under ``setting`` (default: the current one), the forms of every norm inside
    ``module`` (an ``nn.Module``: e.g. a deep copy, or a model built under another setting); returns it."""
    with kernels(setting or kernels_setting()):
        for m in module.modules():
            if hasattr(m, "kernels"):
                m.kernels = kernels_for(type(m))
            if hasattr(m, "compiles"):
                m.compiles = allows("compiled")
    return module
