"""SwitchNorm's accelerated forms: its own Triton kernels (:mod:`normbench.accel._triton_switch`), and the
mixture's group affine map through the fused CPU :class:`~normbench.accel.cpu.GroupAffine`."""

from __future__ import annotations

import torch
from torch import Tensor

from normbench.accel import _triton, register_kernel
from normbench.accel._triton_switch import switch_backward, switch_map, switch_plan, switch_pools
from normbench.accel.cpu import group_affine_fused, use_fused
from normbench.accel.planes import kernels_backward, on_planes
from normbench.norms._base import like_input
from normbench.norms.switchnorm import SwitchNorm


class SwitchNormFused(torch.autograd.Function):
    """SwitchNorm on its Triton kernels (:mod:`normbench.accel._triton_switch`, which derives the
    backward): three launches per direction, the running statistics moved inside them.

    ``apply(x, weight, bias, mean_logits, var_logits, running_mean, running_var, eps, momentum,
    training)`` returns y. Once differentiable.
    """

    @staticmethod
    def forward(
        ctx, x, weight, bias, mean_logits, var_logits, running_mean, running_var, eps, momentum, training
    ):
        ctx.plan = plan = switch_plan(x.shape, x.dtype, weight is not None, bias is not None)
        mean, var = _triton.plane_moments(x, plan.block)
        rows, cols = switch_pools(mean, var, running_mean, running_var, momentum, training, plan)
        params = (weight, bias, mean_logits, var_logits)
        ctx.eps, ctx.training = eps, training
        ctx.save_for_backward(x, mean, var, rows, cols, *params)
        return switch_map(x, mean, var, rows, cols, params, eps, plan)

    @staticmethod
    @kernels_backward
    def backward(ctx, g: Tensor):
        x, mean, var, rows, cols, *params = ctx.saved_tensors
        grads = switch_backward(
            g.contiguous(), x, mean, var, rows, cols, tuple(params), ctx.eps, ctx.training, ctx.plan
        )
        needed = ctx.needs_input_grad[:5]
        return *(grad if need else None for grad, need in zip(grads, needed, strict=True)), *(None,) * 5


@register_kernel(SwitchNorm, "triton", on_planes)
def switchnorm_triton(m: SwitchNorm, x: Tensor) -> Tensor:
    return SwitchNormFused.apply(
        x, m.weight, m.bias, m.mean_logits, m.var_logits, m.running_mean, m.running_var, m.eps, m.momentum,
        m.training,
    )  # fmt: skip


@register_kernel(SwitchNorm, "fused", use_fused)
def switchnorm_fused(m: SwitchNorm, x: Tensor) -> Tensor:
    y, mean_in, var_in = group_affine_fused(
        x, m.coefficients(), m.weight, m.bias, m.mean_logits, m.var_logits
    )
    m.track(x, mean_in, var_in)
    return like_input(y, x)
