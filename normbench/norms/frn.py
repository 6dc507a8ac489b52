"""Filter Response Normalization with its Thresholded Linear Unit (Singh & Krishnan 2020)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from normbench.norms._base import ChannelNorm, like_input
from normbench.norms._stats import at_least_float32
from normbench.norms.registry import register_norm


def _frn_tlu(x: Tensor, w: Tensor, b: Tensor, tau: Tensor, eps: Tensor | float) -> Tensor:
    """FRN + TLU under autograd; parameters shaped (1, C, 1, ...)."""
    x = x.to(at_least_float32(x))  # statistics in float32 under autocast and in float16
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
        if (y := self.accelerated(x)) is not None:
            return y
        c, tail = self.num_channels, [1] * (x.dim() - 2)
        w = x.new_ones(c) if self.weight is None else self.weight
        b = x.new_zeros(c) if self.bias is None else self.bias
        eps = self.eps if self.eps_l is None else (self.eps + self.eps_l.abs()).view(1, c, *tail)
        y = self.formula(_frn_tlu)(
            x, w.view(1, c, *tail), b.view(1, c, *tail), self.tau.view(1, c, *tail), eps
        )
        return like_input(y, x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, learnable_eps={self.learnable_eps}"
