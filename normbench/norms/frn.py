"""Filter Response Normalization with its Thresholded Linear Unit (Singh & Krishnan 2020)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from normbench.norms._base import ChannelNorm, like_input
from normbench.norms._kernels import compiled_on_gpu, group_dot, group_sum, group_view, use_fused
from normbench.norms._planes import TLU_ACT, affine_family, use_planes
from normbench.norms.registry import register_norm


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
        r = torch.rsqrt(torch.linalg.vector_norm(x.reshape(n, c, -1), dim=2).square() / s + eps)
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


@compiled_on_gpu
def _frn_tlu(x: Tensor, w: Tensor, b: Tensor, tau: Tensor, eps: Tensor | float) -> Tensor:
    """The formula of :class:`_FilterResponseNormTLU` under autograd; parameters shaped (1, C, 1, ...)."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in float32 under autocast
    nu2 = x.square().mean(dim=tuple(range(2, x.dim())), keepdim=True)
    y = x * torch.rsqrt(nu2 + eps) * w + b
    return torch.where(y > tau, y, tau)  # the TLU; its gradient goes to tau where y <= tau


@register_norm(
    "frn",
    aliases=("filterresponsenorm",),
    paper="Singh & Krishnan 2020, Filter Response Normalization Layer, arXiv:1911.09737",
    replaces_activation=True,
    min_spatial_positions=2,  # with the default fixed eps; learnable_eps=True also takes (N, C),
    population="wide",
)
class FilterResponseNorm(ChannelNorm):
    r"""FRN + TLU: per sample and channel, divide by the root mean square over the spatial positions,
    apply the affine map, then a learned threshold (the TLU replaces the ReLU).

    .. math::
        \nu^2_{nc} = \mathrm{E}_s[x_{nc}^2],\quad
        y_{nc} = \max\!\left(\gamma_c \frac{x_{nc}}{\sqrt{\nu^2_{nc} + \epsilon}} + \beta_c,\; \tau_c\right)

    No mean is subtracted. For inputs with few positions the paper makes ε learnable,
    :math:`\epsilon = \epsilon_0 + |\epsilon_l|` (``learnable_eps=True``, parameter ``eps_l``). With a
    single position per channel — (N, C) features — the fixed-ε form reduces to ``sign(x)`` and is
    rejected with a ValueError; use ``learnable_eps=True`` there, as the paper advises for 1×1 maps.
    Models must not add an activation after it (``norm_spec('frn').replaces_activation``).

    Shape:
        Input (N, C, *) with 0-3 spatial dims; output the same shape.
    """

    def __init__(
        self, num_channels: int, eps: float = 1e-6, learnable_eps: bool = False, affine: bool = True
    ) -> None:
        super().__init__(num_channels, eps, affine)
        self.tau = nn.Parameter(torch.zeros(num_channels))
        self.learnable_eps = learnable_eps
        self.eps_l = nn.Parameter(torch.full((num_channels,), 1e-4)) if learnable_eps else None

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if not self.learnable_eps and math.prod(x.shape[2:]) == 1:
            raise ValueError(
                f"FRN: input of shape {tuple(x.shape)} has one position per channel, where fixed-eps FRN "
                "is sign(x); use learnable_eps=True (Singh & Krishnan 2020, Sec. 3.1)"
            )
        if use_planes(x) and self.eps_l is None:  # a learnable eps takes the torch formula
            return affine_family(x, self.weight, self.bias, self.eps, center=False, act=TLU_ACT, t=self.tau)
        if use_fused(x):
            y = _FilterResponseNormTLU.apply(x, self.weight, self.bias, self.tau, self.eps_l, self.eps)
        else:
            c, tail = self.num_channels, [1] * (x.dim() - 2)
            w = x.new_ones(c) if self.weight is None else self.weight
            b = x.new_zeros(c) if self.bias is None else self.bias
            eps = self.eps if self.eps_l is None else (self.eps + self.eps_l.abs()).view(1, c, *tail)
            y = _frn_tlu(x, w.view(1, c, *tail), b.view(1, c, *tail), self.tau.view(1, c, *tail), eps)
        return like_input(y, x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, learnable_eps={self.learnable_eps}"
