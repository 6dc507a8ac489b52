"""EvoNorm-B0 and EvoNorm-S0 (Liu, Brock, Simonyan & Le 2020): normalization and activation in one."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normbench.norms._base import ChannelNorm, like_input, move_towards, wide_copy
from normbench.norms._stats import group_moments, group_view, pooled
from normbench.norms.groupnorm import resolve_groups
from normbench.norms.registry import register_norm

PAPER = "Liu, Brock, Simonyan & Le 2020, Evolving Normalization-Activation Layers, arXiv:2004.02967"


def affine_terms(
    x: Tensor, v: Tensor, weight: Tensor | None, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """(v, γ, β) with γ = 1 and β = 0 standing in for absent affine parameters."""
    c = x.shape[1]
    return v, x.new_ones(c) if weight is None else weight, x.new_zeros(c) if bias is None else bias


def _broadcast(t: Tensor, x: Tensor) -> Tensor:
    """A (C,), (1, C) or (N, C) tensor shaped to broadcast against ``x`` (N, C, *)."""
    return t.reshape(-1, x.shape[1], *[1] * (x.dim() - 2))


def _b0_output(x: Tensor, a: Tensor, s: Tensor, v: Tensor, w: Tensor, b: Tensor) -> Tensor:
    # max(a, v x + s) as a + relu(v x + s - a): torch.maximum's backward is slow
    return x / (a + torch.relu(x * v + s - a)) * w + b


def _s0_output(x: Tensor, r: Tensor, v: Tensor, w: Tensor, b: Tensor) -> Tensor:
    # the statistics stay outside: compiled with them, this ran 1.6x slower on an H100
    return x * torch.sigmoid(v * x) * r * w + b


@register_norm(
    "evonorm_b0",
    paper=PAPER,
    batch_dependent=True,
    running_stats=True,
    min_spatial_positions=2,
    replaces_activation=True,
    population="wide",
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
        self.check_momentum(momentum)
        self.momentum = momentum
        self.v = nn.Parameter(torch.ones(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if x.numel() == 0:
            return self.empty_output(x)
        if (y := self.accelerated(x)) is not None:
            return y
        mean_in, var_in = group_moments(group_view(x))
        a, s = self.coefficients(self.training, mean_in, var_in)
        v, w, b = (_broadcast(t, x) for t in affine_terms(x, self.v, self.weight, self.bias))
        y = self.formula(_b0_output)(x, _broadcast(a, x), _broadcast(s, x), v, w, b)
        self.track(x, mean_in, var_in)
        return like_input(y, x)

    @torch.no_grad()
    def track(self, x: Tensor, mean_in: Tensor, var_in: Tensor) -> None:
        """In training, move ``running_var`` towards the batch variance (unbiased) pooled from the
        instance moments of ``x``."""
        if self.training:
            n = x.numel() / x.shape[1]
            move_towards(
                self.running_var, pooled(mean_in, var_in, 0)[1].flatten() * n / max(n - 1, 1), self.momentum
            )

    def coefficients(self, training: bool, mean_in: Tensor, var_in: Tensor) -> tuple[Tensor, Tensor]:
        """(batch term a, instance term s): a per channel (1, C), s per sample and channel (N, C)."""
        batch_var = pooled(mean_in, var_in, 0)[1] if training else self.running_var[None]
        return torch.sqrt(batch_var + self.eps), torch.sqrt(var_in + self.eps)


@register_norm(
    "evonorm_s0",
    paper=PAPER,
    replaces_activation=True,
    population="wide",
    widen=lambda member, k: wide_copy(member, k, "num_groups"),
)
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
        if x.numel() == 0:
            return self.empty_output(x)
        if (y := self.accelerated(x)) is not None:
            return y
        channels = self.num_channels // self.num_groups
        r = torch.rsqrt(group_moments(group_view(x, channels=channels))[1] + self.eps)
        v, w, b = (_broadcast(t, x) for t in affine_terms(x, self.v, self.weight, self.bias))
        return like_input(
            self.formula(_s0_output)(x, _broadcast(r.repeat_interleave(channels, dim=1), x), v, w, b), x
        )

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, {super().extra_repr()}"
