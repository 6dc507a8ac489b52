"""Switchable Normalization (Luo, Ren, Peng, Zhang & Li 2018)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from normbench.norms._base import ChannelNorm, like_input, move_towards
from normbench.norms._stats import at_least_float32, group_affine, pooled, standardizing
from normbench.norms.registry import register_norm

SOURCES = ("in", "ln", "bn")


def _mixture(
    mean_in: Tensor,
    var_in: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean_logits: Tensor,
    var_logits: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    training: bool,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """SwitchNorm's (scale, shift) per sample and channel from the instance moments, (N, C) each."""
    mean_ln, var_ln = pooled(mean_in, var_in, 1)
    if training:
        mean_bn, var_bn = pooled(mean_in, var_in, 0)
    else:
        mean_bn, var_bn = running_mean[None], running_var[None]
    wm, wv = torch.softmax(mean_logits, 0), torch.softmax(var_logits, 0)
    mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
    var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
    return standardizing(mean, var, eps, weight, bias)


@register_norm(
    "switchnorm",
    aliases=("sn",),
    paper="Luo et al. 2018, Differentiable Learning-to-Normalize via Switchable Normalization, arXiv:1806.10779",
    batch_dependent=True,
    running_stats=True,
    min_spatial_positions=2,
    population="wide",
    widen=lambda member, k: _WideSwitchNorm(member, k),  # defined below the class it extends
)
class SwitchNorm(ChannelNorm):
    r"""Switchable Normalization: a learned softmax mixture of instance, layer and batch statistics.

    .. math::
        y = \frac{x - \sum_k w_k \mu_k}{\sqrt{\sum_k w'_k \sigma^2_k + \epsilon}} \cdot \gamma_c + \beta_c,
        \quad k \in \{\mathrm{in}, \mathrm{ln}, \mathrm{bn}\},\;
        w = \mathrm{softmax}(\lambda_{mean}),\; w' = \mathrm{softmax}(\lambda_{var})

    Instance statistics are per sample and channel over the positions; layer statistics per sample
    over channels and positions; batch statistics per channel over the batch and positions (biased
    variances, each computed from the instance moments as in the paper). In eval mode the batch part
    uses ``running_mean`` / ``running_var`` (unbiased, updated with ``momentum`` like BatchNorm's).
    :meth:`extra_metrics` returns the learned mixture, which runs record per layer (``layers`` in
    result.json) and averaged over layers (metrics ``switchnorm_mean_bn``, ...).

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
        self.mean_logits = nn.Parameter(torch.zeros(3))
        self.var_logits = nn.Parameter(torch.zeros(3))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if x.numel() == 0:
            return self.empty_output(x)
        if (y := self.accelerated(x)) is not None:
            return y
        params = (self.weight, self.bias, self.mean_logits, self.var_logits)
        y, mean_in, var_in = group_affine(x, self.coefficients(), *params)
        self.track(x, mean_in, var_in)
        return like_input(y, x)

    def coefficients(self) -> Callable[..., tuple[Tensor, Tensor]]:
        """(scale, shift) per sample and channel from the instance moments and the parameters (weight,
        bias, mean and var logits), in the mode of this forward (dozens of small ops: compiled on CUDA
        where the ``compiled`` family is chosen)."""
        running = (self.running_mean, self.running_var, self.training, self.eps)
        mixture = self.formula(_mixture)

        def coefficients(*moments_and_params: Tensor | None) -> tuple[Tensor, Tensor]:
            return mixture(*moments_and_params, *running)

        return coefficients

    @torch.no_grad()
    def track(self, x: Tensor, mean_in: Tensor, var_in: Tensor) -> None:
        """In training, move the running statistics towards the batch's, pooled from the instance moments
        of ``x`` (the variance unbiased)."""
        if self.training:
            mean_bn, var_bn = pooled(mean_in, var_in, 0)
            n = x.numel() / x.shape[1]
            move_towards(self.running_mean, mean_bn.flatten(), self.momentum)
            move_towards(self.running_var, var_bn.flatten() * n / max(n - 1, 1), self.momentum)

    def extra_metrics(self) -> dict[str, float]:
        """The learned importance of each statistic: ``mean_in``, ``mean_ln``, ``mean_bn``, ``var_*``."""
        wm, wv = torch.softmax(self.mean_logits.detach(), 0), torch.softmax(self.var_logits.detach(), 0)
        return {
            f"{kind}_{src}": float(w[i])
            for kind, w in (("mean", wm), ("var", wv))
            for i, src in enumerate(SOURCES)
        }


class _WideSwitchNorm(SwitchNorm):
    """K SwitchNorms side by side on (N, K·C, *), the population's wide form: each member's instance,
    layer and batch statistics over its own C channels, mixed by its own softmax weights, and its own
    running statistics (the formula of :class:`SwitchNorm`, on a (N, K, C, positions) view). A
    SwitchNorm itself, so that evaluation finds its running statistics (PreciseBN)."""

    def __init__(self, member: SwitchNorm, k: int) -> None:
        super().__init__(member.num_channels * k, member.eps, member.momentum, member.weight is not None)
        self.members = k
        self.mean_logits = nn.Parameter(member.mean_logits.detach().repeat(k))
        self.var_logits = nn.Parameter(member.var_logits.detach().repeat(k))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        k = self.members
        blocks = x.reshape(len(x), k, self.num_channels // k, -1)  # (N, K, C, positions)
        var_in, mean_in = torch.var_mean(blocks.to(at_least_float32(blocks)), dim=3, correction=0)
        mean_ln, var_ln = pooled(mean_in, var_in, 2)
        if self.training:
            mean_bn, var_bn = pooled(mean_in, var_in, 0)
        else:
            mean_bn, var_bn = self.running_mean.view(1, k, -1), self.running_var.view(1, k, -1)
        wm = torch.softmax(self.mean_logits.view(k, 3), 1).T[..., None]  # (source, K, 1)
        wv = torch.softmax(self.var_logits.view(k, 3), 1).T[..., None]
        mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
        var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
        weight, bias = (None if t is None else t.view(k, -1) for t in (self.weight, self.bias))
        scale, shift = standardizing(mean, var, self.eps, weight, bias)
        if self.training:
            with torch.no_grad():
                n = blocks.shape[0] * blocks.shape[3]
                move_towards(self.running_mean, mean_bn.flatten(), self.momentum)
                move_towards(self.running_var, var_bn.flatten() * n / max(n - 1, 1), self.momentum)
        return like_input((blocks * scale[..., None] + shift[..., None]).reshape(x.shape), x)

    def extra_metrics(self) -> dict[str, float]:
        return {}  # the members report their own mixtures
