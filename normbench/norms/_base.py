"""The base of the built-in plugins: the (N, C, *spatial) input check and per-channel affine parameters."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from normbench.accel import allows, kernels_for
from normbench.accel.compiled import formula
from normbench.schema import is_finite_number

F = TypeVar("F", bound=Callable[..., Tensor])

MAX_SPATIAL_DIMS = 3


def like_input(y: Tensor, x: Tensor) -> Tensor:
    """``y`` in ``x``'s dtype and layout, as torch's own norms return it: float32 parameters promote a
    bfloat16/float16 input's result under autocast, and kernels that work on contiguous views lose a
    channels_last layout, which the next convolution would then not get. A no-op when both match."""
    y = y.to(x.dtype)
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return y.contiguous(memory_format=torch.channels_last)
    return y


@torch.no_grad()
def move_towards(running: Tensor, batch_stat: Tensor, rate: float) -> None:
    """``running += rate * (batch_stat - running)``, in the buffer's dtype: under autocast the batch
    statistic may be bfloat16/float16 while the running statistics stay float32 (as torch keeps them)."""
    running.lerp_(batch_stat.to(running.dtype), rate)


class ChannelNorm(nn.Module):
    """Base of the built-in norms: ``num_channels``, ``eps``, optional per-channel ``weight``/``bias``.

    Subclasses call :meth:`check_input` first in ``forward``. Parameter names match torch's so state
    dicts interoperate.
    """

    min_spatial_positions = 0
    # Whether the plugin has a native torch kernel that it keeps on inputs below
    # normbench.accel.planes.NATIVE_BELOW elements instead of its Triton path (on CUDA).
    native_kernel = False

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        # the accelerated forms of this plugin that runtime.kernels chooses, read once (normbench.accel)
        self.kernels = kernels_for(type(self))
        self.compiles = allows("compiled")  # its formula through torch.compile on CUDA
        if not is_finite_number(eps) or eps <= 0:
            raise ValueError(f"{type(self).__name__}: eps must be a finite number > 0, got {eps!r}")
        if not isinstance(affine, bool):  # a string such as "no" would be true
            raise ValueError(f"{type(self).__name__}: affine must be True or False, got {affine!r}")
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def check_momentum(self, momentum: float | None, none_allowed: bool = False) -> None:
        """Raise ValueError unless ``momentum``, the EMA rate of running statistics, is in [0, 1] (or
        None, a cumulative average, where ``none_allowed``)."""
        if momentum is None and none_allowed:
            return
        if not is_finite_number(momentum) or not 0 <= momentum <= 1:
            allowed = "in [0, 1] or None" if none_allowed else "in [0, 1]"
            raise ValueError(f"{type(self).__name__}: momentum must be {allowed}, got {momentum!r}")

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError unless ``x`` is (N, C, *spatial) with this C and 0-3 spatial dims."""
        if not 2 <= x.dim() <= 2 + MAX_SPATIAL_DIMS or x.shape[1] != self.num_channels:
            raise ValueError(
                f"{type(self).__name__}: expected input of shape (N, {self.num_channels}, *spatial) "
                f"with 0 to {MAX_SPATIAL_DIMS} spatial dims, got {tuple(x.shape)}"
            )
        if self.min_spatial_positions and math.prod(x.shape[2:]) < self.min_spatial_positions:
            raise ValueError(
                f"{type(self).__name__}: needs at least {self.min_spatial_positions} spatial positions "
                f"per channel to compute its statistics, got input of shape {tuple(x.shape)}"
                + ("; (N, C) features have none" if x.dim() == 2 else "")
            )

    def empty_output(self, x: Tensor) -> Tensor:
        """The output for an input without values (a batch of no samples, as a detection head's batch of
        no boxes, or of no positions): empty, of ``x``'s shape, through the affine parameters so that they
        get (zero) gradients, and the running statistics untouched, as torch's norms treat it. Plugins
        whose statistics would divide by the empty count return it instead of their formula."""
        y, shape = x.clone(), (1, -1) + (1,) * (x.dim() - 2)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return like_input(y, x)

    def accelerated(self, x: Tensor) -> Tensor | None:
        """The output of the first of this module's :attr:`kernels` that applies to ``x``, or None (the
        plugin's formula then runs)."""
        for kernel in self.kernels:
            if kernel.applies(self, x):
                return kernel.forward(self, x)
        return None

    def formula(self, fn: F) -> F:
        """The plugin's formula function ``fn``, compiled on CUDA when this module takes the
        ``compiled`` family (:func:`normbench.accel.compiled.formula`)."""
        return formula(fn, self.compiles)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}"


def wide_copy(member: nn.Module, k: int, *scaled: str) -> nn.Module:
    """The wide form of a per-channel norm (the registry's default ``widen``): a copy of ``member``
    whose ``num_channels`` and each attribute named in ``scaled`` (e.g. ``num_groups``) are ``k`` times
    larger. Its tensors are ``member``'s until the population fills them in."""
    wide = copy.deepcopy(member)
    for name in ("num_channels", *scaled):
        setattr(wide, name, getattr(member, name) * k)
    return wide
