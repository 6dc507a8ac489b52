"""EvoNorm-B0 and EvoNorm-S0 (Liu, Brock, Simonyan & Le 2020): normalization and activation in one."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from normbench.norms._base import ChannelNorm, like_input, move_towards, wide_copy
from normbench.norms._kernels import (
    add_moment_grads,
    blocks,
    compiled_on_gpu,
    group_moments,
    group_view,
    pooled,
    position_dot,
    pull_back,
    use_fused,
)
from normbench.norms._planes import B0_ACT, B0_EVAL_ACT, GATE_ACT, affine_family, use_planes
from normbench.norms._triton import Running
from normbench.norms.groupnorm import resolve_groups
from normbench.norms.registry import register_norm

PAPER = "Liu, Brock, Simonyan & Le 2020, Evolving Normalization-Activation Layers, arXiv:2004.02967"


class _EvoNormB0(torch.autograd.Function):
    """y = x / max(a_nc, v_c x + s_nc) · w_c + b_c with (a, s) = coefficients(mean, var) of the
    instance moments: a the batch term (or the running one), s the instance term.

    Backward, with d = max(·), q = g / d, m = [v x + s > a] and P = q x m / d:
    ∂L/∂x|_(a,s) = w q − v w P, ∂L/∂s = −w Σ_pos P, ∂L/∂a = −(w/a) Σ_pos q x (1 − m) (d = a where
    m = 0), ∂L/∂v = −w Σ P x, ∂L/∂w = Σ q x, ∂L/∂b = Σ g; ∂L/∂a and ∂L/∂s reach x through the moments
    (:func:`pull_back`, :func:`add_moment_grads`). Blocked over samples: d is recomputed rather
    than kept, and each direction allocates one activation-sized tensor. Returns (y, mean, var); the
    moments carry no gradient.
    """

    @staticmethod
    def forward(ctx, x, coefficients, v, weight, bias):
        n, c = x.shape[:2]
        mean, var = group_moments(group_view(x))
        a, s = (t.expand(n, c)[..., None] for t in coefficients(mean, var))
        v3, w3, b3 = (t.view(1, c, 1) for t in _affine(x, v, weight, bias))
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        for x_b, y_b, s_b, a_b in blocks(x.reshape(n, c, -1), y.view(n, c, -1), s, a):
            den = torch.mul(x_b, v3).add_(s_b).clamp_(min=a_b)
            torch.mul(torch.div(x_b, den, out=den), w3, out=y_b).add_(b3)
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
        v3, w3, _ = (t.view(1, c, 1) for t in _affine(x, v, weight, None))
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        sums = torch.empty(4, n, c, dtype=x.dtype, device=x.device)  # Σ q x, Σ q x m, Σ P, Σ P x
        x3, g3, gx3 = x.reshape(n, c, -1), g.reshape(n, c, -1), gx.view(n, c, -1)
        for x_b, g_b, gx_b, s_b, a_b, sums_b in blocks(
            x3, g3, gx3, s[..., None], a[..., None], sums.transpose(0, 1)
        ):
            den = torch.mul(x_b, v3).add_(s_b).clamp_(min=a_b)
            q = torch.div(g_b, den, out=gx_b)
            p = q * x_b
            sums_b[:, 0] = p.sum(2)
            p.mul_(torch.sub(den, a_b).sign_())  # d >= a everywhere, so the sign is the indicator m
            sums_b[:, 1] = p.sum(2)
            p.div_(den)
            sums_b[:, 2] = p.sum(2)
            sums_b[:, 3] = position_dot(p, x_b)
            q.mul_(w3).addcmul_(p, v3 * w3, value=-1)  # the part of ∂L/∂x not through the moments
        qx, qxm, p_sum, px = sums
        w = w3.view(c)
        g_a, g_s = -(w / a) * (qx - qxm), -w * p_sum
        _, (g_mean, g_var) = pull_back(ctx.coefficients, [mean, var], (g_a, g_s))
        add_moment_grads(group_view(gx), group_view(x), mean, g_mean, g_var)
        g_w = qx.sum(0) if weight is not None else None
        g_b = g.sum(dim=(0, *range(2, x.dim()))) if ctx.has_bias else None
        return gx, None, -(w * px).sum(0), g_w, g_b


def _affine(
    x: Tensor, v: Tensor, weight: Tensor | None, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """(v, γ, β) with γ = 1 and β = 0 standing in for absent affine parameters."""
    c = x.shape[1]
    return v, x.new_ones(c) if weight is None else weight, x.new_zeros(c) if bias is None else bias


def _broadcast(t: Tensor, x: Tensor) -> Tensor:
    """A (C,), (1, C) or (N, C) tensor shaped to broadcast against ``x`` (N, C, *)."""
    return t.reshape(-1, x.shape[1], *[1] * (x.dim() - 2))


@compiled_on_gpu
def _b0_output(x: Tensor, a: Tensor, s: Tensor, v: Tensor, w: Tensor, b: Tensor) -> Tensor:
    # max(a, v x + s) as a + relu(v x + s - a): torch.maximum's backward is slow
    return x / (a + torch.relu(x * v + s - a)) * w + b


@compiled_on_gpu
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
        self.momentum = momentum
        self.v = nn.Parameter(torch.ones(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if use_planes(x):
            act = B0_ACT if self.training else B0_EVAL_ACT
            return affine_family(
                x,
                self.weight,
                self.bias,
                self.eps,
                samples=x.shape[0],
                act=act,
                t=self.v,
                aux=None if self.training else self.running_var,
                running=Running(None, self.running_var, self.momentum) if self.training else None,
            )
        coefficients = partial(self._coefficients, self.training)
        if use_fused(x):
            y, mean_in, var_in = _EvoNormB0.apply(x, coefficients, self.v, self.weight, self.bias)
        else:  # the same formula under autograd
            mean_in, var_in = group_moments(group_view(x))
            a, s = coefficients(mean_in, var_in)
            v, w, b = (_broadcast(t, x) for t in _affine(x, self.v, self.weight, self.bias))
            y = _b0_output(x, _broadcast(a, x), _broadcast(s, x), v, w, b)
        if self.training:
            with torch.no_grad():
                n = x.numel() / x.shape[1]
                move_towards(
                    self.running_var,
                    pooled(mean_in, var_in, 0)[1].flatten() * n / max(n - 1, 1),
                    self.momentum,
                )
        return like_input(y, x)

    def _coefficients(self, training: bool, mean_in: Tensor, var_in: Tensor) -> tuple[Tensor, Tensor]:
        """(batch term a, instance term s): a per channel (1, C), s per sample and channel (N, C)."""
        batch_var = pooled(mean_in, var_in, 0)[1] if training else self.running_var[None]
        return torch.sqrt(batch_var + self.eps), torch.sqrt(var_in + self.eps)


class _EvoNormS0(torch.autograd.Function):
    """y = x · sigmoid(v_c x) · w_c r_ng + b_c with r = (Var_{c∈g, pos} x + eps)^(-1/2) over each
    sample's group of ``channels`` consecutive channels.

    Backward, with σ = sigmoid(v x) recomputed, R = g σ (1 − σ) x and t_nc = Σ_pos g σ x:
    ∂L/∂x|_r = w r (g σ + v R), ∂L/∂v = Σ w r R x, ∂L/∂w = Σ_n r t, ∂L/∂b = Σ g, and
    ∂L/∂var_ng = −½ r³ Σ_{c∈g} w_c t_nc reaches x through the moments (:func:`add_moment_grads`).
    Blocked over samples, one activation-sized tensor allocated in each direction.
    """

    @staticmethod
    def forward(ctx, x, v, weight, bias, channels: int, eps: float):
        n, c = x.shape[:2]
        mean, var = group_moments(group_view(x, channels=channels))
        r = torch.rsqrt(var + eps)
        v3, w3, b3 = (t.view(1, c, 1) for t in _affine(x, v, weight, bias))
        scale = (r.repeat_interleave(channels, dim=1) * w3.view(1, c))[..., None]
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        for x_b, y_b, scale_b in blocks(x.reshape(n, c, -1), y.view(n, c, -1), scale):
            torch.mul(x_b, v3, out=y_b).sigmoid_().mul_(x_b).mul_(scale_b).add_(b3)
        ctx.save_for_backward(x, mean, r, v, weight)
        ctx.channels, ctx.has_bias = channels, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, mean, r, v, weight = ctx.saved_tensors
        n, c = x.shape[:2]
        v3, w3, _ = (t.view(1, c, 1) for t in _affine(x, v, weight, None))
        r_c = r.repeat_interleave(ctx.channels, dim=1)  # (n, c)
        scale = (r_c * w3.view(1, c))[..., None]
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        sums = torch.empty(2, n, c, dtype=x.dtype, device=x.device)  # Σ g σ x, Σ R x
        x3, g3, gx3 = x.reshape(n, c, -1), g.reshape(n, c, -1), gx.view(n, c, -1)
        for x_b, g_b, gx_b, scale_b, sums_b in blocks(x3, g3, gx3, scale, sums.transpose(0, 1)):
            sig = torch.mul(x_b, v3).sigmoid_()
            g_sig = g_b * sig
            sums_b[:, 0] = position_dot(g_sig, x_b)
            r_b = sig.neg_().add_(1).mul_(x_b).mul_(g_sig)
            sums_b[:, 1] = position_dot(r_b, x_b)
            torch.mul(g_sig.add_(r_b.mul_(v3)), scale_b, out=gx_b)  # the part of ∂L/∂x not through r
        t, rx = sums
        g_var = -0.5 * r**3 * (t * w3.view(1, c)).view(n, -1, ctx.channels).sum(2)
        xv, gv = group_view(x, channels=ctx.channels), group_view(gx, channels=ctx.channels)
        add_moment_grads(gv, xv, mean, None, g_var)
        g_w = (r_c * t).sum(0) if weight is not None else None
        g_b = g.sum(dim=(0, *range(2, x.dim()))) if ctx.has_bias else None
        return gx, (scale[..., 0] * rx).sum(0), g_w, g_b, None, None


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
        channels = self.num_channels // self.num_groups
        if use_planes(x):
            return affine_family(
                x, self.weight, self.bias, self.eps, channels=channels, act=GATE_ACT, t=self.v
            )
        if use_fused(x):
            with torch.autocast(x.device.type, enabled=False):  # statistics in float32, as timm does
                x32 = x.to(torch.promote_types(x.dtype, torch.float32))
                y = _EvoNormS0.apply(x32, self.v, self.weight, self.bias, channels, self.eps)
            return like_input(y, x)
        r = torch.rsqrt(group_moments(group_view(x, channels=channels))[1] + self.eps)
        v, w, b = (_broadcast(t, x) for t in _affine(x, self.v, self.weight, self.bias))
        return like_input(_s0_output(x, _broadcast(r.repeat_interleave(channels, dim=1), x), v, w, b), x)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, {super().extra_repr()}"
