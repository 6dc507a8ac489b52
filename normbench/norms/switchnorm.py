"""Switchable Normalization (Luo, Ren, Peng, Zhang & Li 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normbench.norms._base import ChannelNorm, InstanceMoments
from normbench.norms.registry import register_norm

SOURCES = ("in", "ln", "bn")


class _Standardize(torch.autograd.Function):
    """y = (x − mean_nc) · r_nc · w_c + b_c with r = (var_nc + eps)^(-1/2), few allocations.

    Backward, with A = Σ_s g and B = Σ_s g (x − mean): ∂L/∂x = g r w, ∂L/∂mean = −r w A,
    ∂L/∂var = −½ r³ w B, ∂L/∂w = Σ_n r B, ∂L/∂b = Σ_n A.
    """

    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps: float):
        n, c = x.shape[:2]
        xf = x.reshape(n, c, -1)
        r = torch.rsqrt(var + eps)
        w = weight if weight is not None else x.new_ones(c)
        y = (xf - mean[..., None]).mul_((r * w)[..., None])
        if bias is not None:
            y.add_(bias[:, None])
        ctx.save_for_backward(x, mean, r, w)
        ctx.has_affine = weight is not None
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        x, mean, r, w = ctx.saved_tensors
        n, c = x.shape[:2]
        xf, gf = x.reshape(n, c, -1), g.reshape(n, c, -1)
        a = gf.sum(2)
        b = (xf - mean[..., None]).mul_(gf).sum(2)
        gx = (gf * (r * w)[..., None]).reshape(x.shape)
        g_w = (r * b).sum(0) if ctx.has_affine else None
        g_b = a.sum(0) if ctx.has_affine else None
        return gx, -r * w * a, -0.5 * r**3 * w * b, g_w, g_b, None


@register_norm(
    "switchnorm",
    aliases=("sn",),
    paper="Luo et al. 2018, Differentiable Learning-to-Normalize via Switchable Normalization, arXiv:1806.10779",
    batch_dependent=True,
    running_stats=True,
    min_spatial_positions=2,
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
        self.momentum = momentum
        self.mean_logits = nn.Parameter(torch.zeros(3))
        self.var_logits = nn.Parameter(torch.zeros(3))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        mean_in, var_in = InstanceMoments.apply(x)  # (N, C); the mixing below is on (N, C) tensors
        second_in = var_in + mean_in**2
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = second_in.mean(1, keepdim=True) - mean_ln**2
        if self.training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = second_in.mean(0, keepdim=True) - mean_bn**2
            with torch.no_grad():
                n = x.numel() / x.shape[1]
                self.running_mean.lerp_(mean_bn.flatten(), self.momentum)
                self.running_var.lerp_(var_bn.flatten() * n / max(n - 1, 1), self.momentum)
        else:
            mean_bn, var_bn = self.running_mean[None], self.running_var[None]
        wm, wv = torch.softmax(self.mean_logits, 0), torch.softmax(self.var_logits, 0)
        mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
        var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
        return _Standardize.apply(x, mean, var, self.weight, self.bias, self.eps)

    def extra_metrics(self) -> dict[str, float]:
        """The learned importance of each statistic: ``mean_in``, ``mean_ln``, ``mean_bn``, ``var_*``."""
        wm, wv = torch.softmax(self.mean_logits.detach(), 0), torch.softmax(self.var_logits.detach(), 0)
        return {
            f"{kind}_{src}": float(w[i])
            for kind, w in (("mean", wm), ("var", wv))
            for i, src in enumerate(SOURCES)
        }
