"""EvoNorm-B0 and EvoNorm-S0 (Liu, Brock, Simonyan & Le 2020): normalization and activation in one."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from normbench.norms._base import (
    ChannelNorm,
    as_rows,
    instance_moments,
    moment_grad_terms,
    pooled,
    pull_back,
    row_blocks,
)
from normbench.norms.groupnorm import resolve_groups
from normbench.norms.registry import register_norm

PAPER = "Liu, Brock, Simonyan & Le 2020, Evolving Normalization-Activation Layers, arXiv:2004.02967"


class _EvoNormB0(torch.autograd.Function):
    """y = x / max(a_nc, v_c x + s_nc) · w_c + b_c with (a, s) = coefficients(mean, var) of the
    instance moments: a the batch term (or the running one), s the instance term.

    Backward, with d = max(·), q = g / d, m = [v x + s > a] and P = q x m / d:
    ∂L/∂x|_(a,s) = w q − v w P, ∂L/∂s = −w Σ_pos P, ∂L/∂a = −(w/a) Σ_pos q x (1 − m) (d = a where
    m = 0), ∂L/∂v = −w Σ P x, ∂L/∂w = Σ q x, ∂L/∂b = Σ g; ∂L/∂a and ∂L/∂s reach x through the moments
    (:func:`pull_back`, :func:`moment_grad_terms`). Blocked over rows: d is recomputed rather than
    kept, and each direction allocates one activation-sized tensor. Returns (y, mean, var); the
    moments carry no gradient.
    """

    @staticmethod
    def forward(ctx, x, coefficients, v, weight, bias):
        n, c = x.shape[:2]
        mean, var = instance_moments(x)
        a, s = coefficients(mean, var)
        w = weight if weight is not None else x.new_ones(c)
        b = bias if bias is not None else x.new_zeros(c)
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        x_rows, *columns = as_rows(x, v, s, a, w, b)
        for x_b, y_b, v_b, s_b, a_b, w_b, b_b in row_blocks(x_rows, y.view(n * c, -1), *columns):
            den = torch.mul(x_b, v_b).add_(s_b).clamp_(min=a_b)
            torch.mul(torch.div(x_b, den, out=den), w_b, out=y_b).add_(b_b)
        ctx.save_for_backward(x, mean, var, v, weight)
        ctx.coefficients, ctx.has_bias = coefficients, bias is not None
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, g, *_):
        x, mean, var, v, weight = ctx.saved_tensors
        n, c = x.shape[:2]
        a, s = (t.expand(n, c) for t in ctx.coefficients(mean, var))
        w = weight if weight is not None else x.new_ones(c)
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        sums = torch.empty(4, n * c, dtype=x.dtype, device=x.device)  # Σ q x, Σ q x m, Σ P, Σ P x
        blocks = row_blocks(*as_rows(x, v, s, a, w), g.reshape(n * c, -1), gx.view(n * c, -1), sums.T)
        for x_b, v_b, s_b, a_b, w_b, g_b, gx_b, sums_b in blocks:
            den = torch.mul(x_b, v_b).add_(s_b).clamp_(min=a_b)
            q = torch.div(g_b, den, out=gx_b)
            p = q * x_b
            sums_b[:, 0] = p.sum(1)
            p.mul_(torch.sub(den, a_b).sign_())  # d >= a everywhere, so the sign is the indicator m
            sums_b[:, 1] = p.sum(1)
            p.div_(den)
            sums_b[:, 2] = p.sum(1)
            sums_b[:, 3] = torch.linalg.vecdot(p, x_b)
            q.mul_(w_b).addcmul_(p, v_b * w_b, value=-1)  # the part of ∂L/∂x not through the moments
        qx, qxm, p_sum, px = (t.view(n, c) for t in sums)
        g_a, g_s = -(w / a) * (qx - qxm), -w * p_sum
        _, (g_mean, g_var) = pull_back(ctx.coefficients, [mean, var], (g_a, g_s))
        k, j = moment_grad_terms(x, mean, g_mean, g_var)
        gx.addcmul_(x, k).add_(j)
        g_v = -(w * px).sum(0)
        g_w = qx.sum(0) if weight is not None else None
        g_b = g.sum(dim=(0, *range(2, x.dim()))) if ctx.has_bias else None
        return gx, None, g_v, g_w, g_b


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
        y, mean_in, var_in = _EvoNormB0.apply(
            x, partial(self._coefficients, self.training), self.v, self.weight, self.bias
        )
        if self.training:
            with torch.no_grad():
                n = x.numel() / x.shape[1]
                self.running_var.lerp_(
                    pooled(mean_in, var_in, 0)[1].flatten() * n / max(n - 1, 1), self.momentum
                )
        return y

    def _coefficients(self, training: bool, mean_in: Tensor, var_in: Tensor) -> tuple[Tensor, Tensor]:
        """(batch term a, instance term s): a per channel (1, C), s per sample and channel (N, C)."""
        batch_var = pooled(mean_in, var_in, 0)[1] if training else self.running_var[None]
        return torch.sqrt(batch_var + self.eps), torch.sqrt(var_in + self.eps)


class _EvoNormS0(torch.autograd.Function):
    """y = x · sigmoid(v_c x) · scale_nc + b_c with scale = coefficients(mean, var, weight) a function
    of the instance moments (w_c / std over the sample's group of channels).

    Backward, with σ = sigmoid(v x) recomputed and R = g σ (1 − σ) x: ∂L/∂x|_scale = scale (g σ + v R),
    ∂L/∂scale = Σ_pos g σ x, ∂L/∂v = Σ scale R x, ∂L/∂b = Σ g; ∂L/∂scale reaches x and w through the
    moments (:func:`pull_back`, :func:`moment_grad_terms`). Blocked over rows, one activation-sized
    tensor allocated in each direction.
    """

    @staticmethod
    def forward(ctx, x, coefficients, v, weight, bias):
        n, c = x.shape[:2]
        mean, var = instance_moments(x)
        (scale,) = coefficients(mean, var, weight)
        b = bias if bias is not None else x.new_zeros(c)
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        x_rows, *columns = as_rows(x, v, scale, b)
        for x_b, y_b, v_b, scale_b, b_b in row_blocks(x_rows, y.view(n * c, -1), *columns):
            torch.mul(x_b, v_b, out=y_b).sigmoid_().mul_(x_b).mul_(scale_b).add_(b_b)
        ctx.save_for_backward(x, mean, var, v, weight)
        ctx.coefficients, ctx.has_bias = coefficients, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, mean, var, v, weight = ctx.saved_tensors
        n, c = x.shape[:2]
        (scale,) = ctx.coefficients(mean, var, weight)
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        sums = torch.empty(2, n * c, dtype=x.dtype, device=x.device)  # Σ g σ x, Σ R x
        x_rows, v_rows, scale_rows = as_rows(x, v, scale)
        blocks = row_blocks(x_rows, v_rows, scale_rows, g.reshape(n * c, -1), gx.view(n * c, -1), sums.T)
        for x_b, v_b, scale_b, g_b, gx_b, sums_b in blocks:
            sig = torch.mul(x_b, v_b).sigmoid_()
            g_sig = g_b * sig
            sums_b[:, 0] = torch.linalg.vecdot(g_sig, x_b)
            r = sig.neg_().add_(1).mul_(x_b).mul_(g_sig)
            sums_b[:, 1] = torch.linalg.vecdot(r, x_b)
            torch.mul(g_sig.add_(r.mul_(v_b)), scale_b, out=gx_b)  # the part of ∂L/∂x not through the moments
        t, rx = (s.view(n, c) for s in sums)
        _, (g_mean, g_var, g_w) = pull_back(ctx.coefficients, [mean, var, weight], (t,))
        k, j = moment_grad_terms(x, mean, g_mean, g_var)
        gx.addcmul_(x, k).add_(j)
        g_b = g.sum(dim=(0, *range(2, x.dim()))) if ctx.has_bias else None
        return gx, None, (scale * rx).sum(0), g_w, g_b


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
        return _EvoNormS0.apply(x, self._coefficients, self.v, self.weight, self.bias)

    def _coefficients(self, mean_in: Tensor, var_in: Tensor, weight: Tensor | None) -> tuple[Tensor]:
        """The per sample and channel scale w_c / sqrt(Var_group + eps), (N, C), from the moments."""
        n, c = mean_in.shape
        grouped = (n, self.num_groups, c // self.num_groups)
        var_g = pooled(mean_in.view(grouped), var_in.view(grouped), 2)[1]
        scale = torch.rsqrt(var_g + self.eps).expand(grouped).reshape(n, c)
        return (scale if weight is None else scale * weight,)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, {super().extra_repr()}"
