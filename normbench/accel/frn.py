"""FRN + TLU's accelerated forms: a fused CPU Function and the affine family's TLU on Triton (fixed
eps only: a learnable eps takes the formula)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from normbench.accel import register_kernel
from normbench.accel.cpu import use_fused
from normbench.accel.planes import TLU_ACT, affine_family, on_planes
from normbench.norms._base import like_input
from normbench.norms._stats import at_least_float32, group_dot, group_sum, group_view
from normbench.norms.frn import FilterResponseNorm


class _FilterResponseNormTLU(torch.autograd.Function):
    """z = max(x · r · w + b, tau) with r_nc = (mean_s x² + eps_c)^(-1/2), in few memory passes.

    Backward, with gy = g · [y > tau] and t_nc = Σ_s gy x: ∂L/∂x = gy r w − x r³ w t / S,
    ∂L/∂w = Σ_n r t, ∂L/∂b = Σ gy, ∂L/∂tau = Σ g − Σ gy, ∂L/∂eps = −½ w Σ_n r³ t (S = positions).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, tau, eps_l, eps0: float):
        n, c = x.shape[:2]
        s = x[0, 0].numel()
        tail = [1] * (x.dim() - 2)
        eps = eps0 + eps_l.abs() if eps_l is not None else eps0
        r = torch.rsqrt(
            torch.linalg.vector_norm(x.reshape(n, c, -1), dim=2, dtype=at_least_float32(x)).square() / s + eps
        )
        w = weight if weight is not None else x.new_ones(c)
        b = bias if bias is not None else x.new_zeros(c)
        # one fresh activation-sized tensor, the rest in place: on CPU each fresh one costs page faults
        z = (
            torch.mul(x, (r * w).view(n, c, *tail))
            .add_(b.view(1, c, *tail))
            .clamp_(min=tau.view(1, c, *tail))
        )
        ctx.save_for_backward(x, r, w, z, tau, eps_l)
        ctx.s = s
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, r, w, z, tau, eps_l = ctx.saved_tensors
        n, c = x.shape[:2]
        tail = [1] * (x.dim() - 2)
        # [y > tau] as 0/1 floats (z >= tau everywhere); gy's buffer becomes ∂L/∂x at the end
        gy = torch.sub(z, tau.view(1, c, *tail)).sign_().mul_(g)
        t = group_dot(group_view(gy), group_view(x))  # (n, c)
        gy_c = group_sum(group_view(gy))  # (n, c)
        g_w = (r * t).sum(0) if ctx.needs_input_grad[1] else None
        g_b = gy_c.sum(0) if ctx.needs_input_grad[2] else None
        g_tau = (group_sum(group_view(g)) - gy_c).sum(0)
        g_eps = (-0.5 * w * (r**3 * t).sum(0)) * torch.sign(eps_l) if eps_l is not None else None
        gx = gy.mul_((r * w).view(n, c, *tail)).addcmul_(x, (-(r**3) * w * t / ctx.s).view(n, c, *tail))
        return gx, g_w, g_b, g_tau, g_eps, None


def _fixed_eps_on_planes(m: FilterResponseNorm, x: Tensor) -> bool:
    return m.eps_l is None and on_planes(m, x)


@register_kernel(FilterResponseNorm, "triton", _fixed_eps_on_planes)
def frn_triton(m: FilterResponseNorm, x: Tensor) -> Tensor:
    return affine_family(x, m.weight, m.bias, m.eps, center=False, act=TLU_ACT, t=m.tau)


@register_kernel(FilterResponseNorm, "fused", use_fused)
def frn_fused(m: FilterResponseNorm, x: Tensor) -> Tensor:
    return like_input(_FilterResponseNormTLU.apply(x, m.weight, m.bias, m.tau, m.eps_l, m.eps), x)
