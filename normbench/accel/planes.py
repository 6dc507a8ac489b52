"""The ``triton`` family: statistics of each (sample, channel) plane and Triton kernels
(:mod:`normbench.accel._triton`) that normalize with them, on CUDA.

Each plugin's statistics come from its planes' moments — directly (instance statistics), pooled over
samples (batch and ghost-batch statistics) or over channels (layer and group statistics), with the law
of total variance. :func:`affine_family` (LayerNorm, GroupNorm, InstanceNorm, ghost BatchNorm,
BatchRenorm, RMSNorm, FRN, both EvoNorms) does all of it inside the kernels: two launches per
direction, eight memory passes as native BatchNorm, no small-tensor op in between; the forward's second
launch also moves the running statistics, the backward's second sums the parameters' gradients.
SwitchNorm's mixture has its own kernels (:mod:`normbench.accel._triton_switch`). Every plugin keeps
its torch formula for the CPU, ``torch.compile``, ``vmap`` and channels_last inputs;
tests/test_planes.py ties the two through Triton's interpreter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from normbench.accel import _triton
from normbench.accel._triton import (  # noqa: F401  (for the per-plugin modules)
    B0_ACT,
    B0_EVAL_ACT,
    GATE_ACT,
    NO_ACT,
    RENORM_ACT,
    TLU_ACT,
)
from normbench.norms._stats import vmapped

# Devices whose tensors take this path; the tests add "cpu" under Triton's interpreter, the benchmark
# empties it to time the torch formulas.
TRITON_DEVICES = {"cuda"}
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Plugins with a native torch kernel (LayerNorm, GroupNorm, InstanceNorm) keep it below this many
# elements: there a layer is bound by host time, and torch's one launch per direction beats four.
NATIVE_BELOW = 1 << 22


def _device_type(x: Tensor) -> str:
    """``x.device.type`` without building a device and a string on CPU and CUDA (on a GPU's small shapes
    each layer is bound by host time)."""
    return "cuda" if x.is_cuda else "cpu" if x.is_cpu else x.device.type


def use_planes(x: Tensor, native: bool = False) -> bool:
    """Whether ``x`` takes this path: a contiguous (N, C, *spatial) float tensor on a device of
    :data:`TRITON_DEVICES`, Triton installed, outside ``vmap`` and ``torch.compile``; for a plugin with a
    ``native`` torch kernel, at least :data:`NATIVE_BELOW` elements."""
    return (
        (not native or x.numel() >= NATIVE_BELOW)
        and _triton.AVAILABLE
        and _device_type(x) in TRITON_DEVICES
        and x.dim() >= 3
        and x.dtype in FLOATS
        and x.numel() > 0
        and x.is_contiguous()
        and not vmapped(x)
        and not torch.compiler.is_compiling()
    )


def on_planes(module: object, x: Tensor) -> bool:
    """The ``applies`` of the plugins' ``triton`` kernels: :func:`use_planes`, keeping a plugin's native
    torch kernel (``native_kernel``) on small inputs."""
    return use_planes(x, native=getattr(module, "native_kernel", False))


def kernels_backward(backward: Callable) -> Callable:
    """``once_differentiable`` for a backward made of kernels, without its cost where it does nothing:
    with grad mode off (a plain backward) the gradients come back as they are; under ``create_graph``
    torch's wrapper makes a backward through them fail loudly (the kernels record no graph)."""
    guarded = once_differentiable(backward)

    @functools.wraps(backward)
    def wrapper(ctx, *grads: Tensor | None):
        return guarded(ctx, *grads) if torch.is_grad_enabled() else backward(ctx, *grads)

    return wrapper


class GroupAffineFused(torch.autograd.Function):
    """The affine family in four kernels and no small-tensor ops in between: ``y = (x − μ_g) r_g w_c +
    b_c`` with ``r_g = (σ²_g + eps)^(-1/2)`` over groups of ``samples`` × ``channels`` planes
    (:func:`normbench.norms._stats.group_view`); without ``center``, ``μ_g = 0`` and ``σ²_g = E x²``
    (RMSNorm, FRN). ``act``: ``TLU_ACT`` gives ``max(y, t_c)`` (FRN), ``GATE_ACT``
    ``x sigmoid(t_c x) r_g w_c + b_c`` (EvoNorm-S0), ``B0_ACT`` ``x w_c / max(a_c, t_c x + s_nc) + b_c``
    with a = 1 / r_g of the batch group and s the instance term (EvoNorm-B0; ``B0_EVAL_ACT`` takes
    a from the running variance ``aux``); ``RENORM_ACT`` (Batch Renormalization) scales by ``w_c r'_c`` and
    shifts by ``b_c + w_c d'_c``, r' and d' from the batch group's statistics and a snapshot without
    gradient: ``t`` the running mean, the running variance and the ramps of r_max and d_max
    (:meth:`normbench.norms.batchrenorm.BatchRenorm.schedule`), ``aux`` the step. The kernels'
    docstrings hold the backward.

    ``running`` (`normbench.accel._triton.Running`, or None): running statistics that the forward
    moves towards the batch (or ghost-batch) statistics, in its second launch.

    ``apply(x, weight, bias, t, aux, running, family)`` returns y, ``family`` a
    `normbench.accel._triton.Family`. Once differentiable.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, t, aux, running: _triton.Running | None, family: _triton.Family):
        ctx.plan = plan = _triton.plan(x.shape, x.dtype, family, weight is not None, bias is not None)
        mean, var = _triton.plane_moments(x, plan.block)
        y = _triton.group_affine(x, mean, var, (weight, bias, t, aux), plan, running)
        ctx.save_for_backward(x, mean, var, weight, bias, t, aux)
        return y

    @staticmethod
    @kernels_backward
    def backward(ctx, g: Tensor):
        x, mean, var, *params = ctx.saved_tensors
        grads = _triton.group_affine_backward(g.contiguous(), x, mean, var, params, ctx.plan)
        needed = ctx.needs_input_grad[:4]
        return *(grad if need else None for grad, need in zip(grads, needed, strict=True)), None, None, None


def affine_family(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    samples: int = 1,
    channels: int = 1,
    center: bool = True,
    act: int = NO_ACT,
    t: Tensor | None = None,
    aux: Tensor | None = None,
    running: _triton.Running | None = None,
) -> Tensor:
    """:class:`GroupAffineFused` on ``x`` (``use_planes(x)`` must hold): y, in ``x``'s dtype and
    (contiguous) layout."""
    family = _triton.Family(eps, samples, channels, center, act)
    return GroupAffineFused.apply(x, weight, bias, t, aux, running, family)
