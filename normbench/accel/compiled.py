"""The ``compiled`` family: a plugin's own formula through ``torch.compile`` on CUDA (one generated kernel
per direction instead of one launch and one memory pass per op). No second copy of the math: the
plugin passes its formula function, and :func:`formula` gives it back compiled or as it is."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

from normbench.norms._stats import vmapped

F = TypeVar("F", bound=Callable[..., torch.Tensor])


@functools.cache
def compiled_on_gpu(fn: F) -> F:
    """``fn`` (a pure function of tensors and constants) compiled with ``torch.compile`` when its first
    argument is on a CUDA device, eager elsewhere (and inside vmap or an outer compile). Shapes become
    dynamic after the first new shape, so a model's few layer shapes and its evaluation batch compile a
    handful of times, not once per step. One wrapper per function."""
    compiled: list[Callable[..., torch.Tensor]] = []

    @functools.wraps(fn)
    def call(x: torch.Tensor, *args):
        if x.device.type != "cuda" or torch.compiler.is_compiling() or vmapped(x):
            return fn(x, *args)
        if not compiled:
            compiled.append(torch.compile(fn, fullgraph=True))
        return compiled[0](x, *args)

    return call  # type: ignore[return-value]


def formula(fn: F, compiles: bool) -> F:
    """The plugin formula ``fn``, compiled on CUDA when its module was built with the ``compiled``
    family chosen (``compiles``)."""
    return compiled_on_gpu(fn) if compiles else fn
