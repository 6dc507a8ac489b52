"""EvoNorm-B0 and EvoNorm-S0 (Liu, Brock, Simonyan & Le 2020): normalization and activation in one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normbench.norms._base import ChannelNorm, moments
from normbench.norms.groupnorm import resolve_groups
from normbench.norms.registry import register_norm

PAPER = "Liu, Brock, Simonyan & Le 2020, Evolving Normalization-Activation Layers, arXiv:2004.02967"


def _shape(x: Tensor) -> tuple[int, ...]:
    return (1, -1, *[1] * (x.dim() - 2))


@register_norm(
    "evonorm_b0",
    paper=PAPER,
    batch_dependent=True,
    running_stats=True,
    min_spatial_positions=2,
    replaces_activation=True,
)
class EvoNormB0(ChannelNorm):
    r"""EvoNorm-B0: a batch-statistics layer that includes its non-linearity.

    .. math::
        y = \frac{x}{\max\left(\sqrt{\mathrm{Var}_{n,s}[x] + \epsilon},\;
        v_c\, x + \sqrt{\mathrm{Var}_{s}[x] + \epsilon}\right)} \cdot \gamma_c + \beta_c

    The batch variance (per channel over N and positions, biased) is replaced by ``running_var``
    (unbiased, updated with ``momentum`` like BatchNorm's) in eval mode; the instance variance is over
    the positions of each sample and channel, so inputs need at least 2 positions. ``v`` is learned per
    channel (init 1). Models add no activation after it.

    Shape:
        Input (N, C, *) with 1-3 spatial dims; output the same shape.
    """

    min_spatial_positions = 2

    def __init__(
        self, num_channels: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True
    ) -> None:
        super().__init__(num_channels, eps, affine)
        self.momentum = momentum
        self.v = nn.Parameter(torch.ones(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        s = _shape(x)
        mean_in, var_in = moments(x, range(2, x.dim()))
        if self.training:  # batch moments from the instance moments (law of total variance)
            mean_b = mean_in.mean(0, keepdim=True)
            batch_var = (var_in + mean_in.square()).mean(0, keepdim=True) - mean_b.square()
            with torch.no_grad():
                n = x.numel() / x.shape[1]
                self.running_var.lerp_(batch_var.flatten() * n / max(n - 1, 1), self.momentum)
        else:
            batch_var = self.running_var.view(s)
        a = torch.sqrt(batch_var + self.eps)
        b = self.v.view(s) * x + torch.sqrt(var_in + self.eps)
        y = x / (b + F.relu(a - b))  # max(a, b), with relu's cheaper backward
        return y if self.weight is None else y * self.weight.view(s) + self.bias.view(s)


@register_norm("evonorm_s0", paper=PAPER, replaces_activation=True)
class EvoNormS0(ChannelNorm):
    r"""EvoNorm-S0: a sample-statistics layer that includes its non-linearity (a SiLU-like gate).

    .. math::
        y = \frac{x \cdot \mathrm{sigmoid}(v_c\, x)}{\sqrt{\mathrm{Var}_{c \in g, s}[x] + \epsilon}}
        \cdot \gamma_c + \beta_c

    with the group variance (biased) per sample over each group of C/G channels and all positions.
    Groups follow GroupNorm's rules (``num_groups`` 32 by default, G = C when C < 32). ``v`` is learned
    per channel (init 1). Models add no activation after it.

    Shape:
        Input (N, C, *) with 0-3 spatial dims; output the same shape.
    """

    def __init__(
        self, num_channels: int, num_groups: int = 32, eps: float = 1e-5, affine: bool = True
    ) -> None:
        super().__init__(num_channels, eps, affine)
        self.num_groups = resolve_groups(num_channels, num_groups, None)
        self.v = nn.Parameter(torch.ones(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        s = _shape(x)
        n = x.shape[0]
        grouped = x.reshape(n, self.num_groups, -1)
        std = torch.sqrt(moments(grouped, (2,))[1] + self.eps)
        std = std.expand(n, self.num_groups, grouped.shape[2]).reshape(x.shape)
        y = x * torch.sigmoid(self.v.view(s) * x) / std
        return y if self.weight is None else y * self.weight.view(s) + self.bias.view(s)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, {super().extra_repr()}"
