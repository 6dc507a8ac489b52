"""RMSNorm's accelerated forms on (N, C, *spatial) inputs: a fused CPU Function and the affine family
without centring on Triton."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from normbench.accel import register_kernel
from normbench.accel.cpu import use_fused
from normbench.accel.planes import affine_family, on_planes
from normbench.norms._stats import at_least_float32, group_dot, group_view
from normbench.norms.rmsnorm import RMSNorm


class _ChannelFirstRMSNorm(torch.autograd.Function):
    """y = x · r_n · w_c with r_n = (mean_{c,s} x² + eps)^(-1/2), in few memory passes.

    Backward: with t_nc = Σ_s g x, ∂L/∂x = g r w − x r³ (Σ_c w_c t_nc) / M and ∂L/∂w_c = Σ_n r_n t_nc
    (M = C × positions); one activation-sized tensor allocated in each direction.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
        n, c = x.shape[:2]
        m = x[0].numel()
        r = torch.rsqrt(
            torch.linalg.vector_norm(x.reshape(n, -1), dim=1, dtype=at_least_float32(x)).square() / m + eps
        )
        w = weight if weight is not None else x.new_ones(c)
        scale = r[:, None] * w[None, :]
        ctx.save_for_backward(x, r, w)
        ctx.m, ctx.has_weight = m, weight is not None
        return x * scale.view(n, c, *[1] * (x.dim() - 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, r, w = ctx.saved_tensors
        n, c = x.shape[:2]
        tail = [1] * (x.dim() - 2)
        t = group_dot(group_view(g), group_view(x))  # (n, c)
        coef = -(r**3) * (t * w).sum(1) / ctx.m  # (n,)
        gx = torch.mul(g, (r[:, None] * w).view(n, c, *tail)).addcmul_(x, coef.view(n, 1, *tail))
        gw = (r[:, None] * t).sum(0) if ctx.has_weight and ctx.needs_input_grad[1] else None
        return gx, gw, None


@register_kernel(RMSNorm, "triton", on_planes)
def rmsnorm_triton(m: RMSNorm, x: Tensor) -> Tensor:
    return affine_family(x, m.weight, m.bias, m.eps, channels=m.num_channels, center=False)


def _spatial_fused(m: RMSNorm, x: Tensor) -> bool:
    return x.dim() > 2 and use_fused(m, x)


@register_kernel(RMSNorm, "fused", _spatial_fused)
def rmsnorm_fused(m: RMSNorm, x: Tensor) -> Tensor:
    return m.biased(_ChannelFirstRMSNorm.apply(x, m.weight, m.eps), x)
