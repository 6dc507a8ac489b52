"""EvoNorm-B0's and EvoNorm-S0's accelerated forms: fused CPU Functions and the affine family's B0 and
gate activations on Triton."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from normbench.accel import register_kernel
from normbench.accel._triton import Running
from normbench.accel.cpu import add_moment_grads, pull_back, use_fused
from normbench.accel.planes import B0_ACT, B0_EVAL_ACT, GATE_ACT, affine_family, on_planes
from normbench.norms._base import like_input
from normbench.norms._stats import at_least_float32, blocks, group_moments, group_view, position_dot
from normbench.norms.evonorm import EvoNormB0, EvoNormS0, affine_terms


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
        v3, w3, b3 = (t.view(1, c, 1) for t in affine_terms(x, v, weight, bias))
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
        v3, w3, _ = (t.view(1, c, 1) for t in affine_terms(x, v, weight, None))
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
        v3, w3, b3 = (t.view(1, c, 1) for t in affine_terms(x, v, weight, bias))
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
        v3, w3, _ = (t.view(1, c, 1) for t in affine_terms(x, v, weight, None))
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


@register_kernel(EvoNormB0, "triton", on_planes)
def evonorm_b0_triton(m: EvoNormB0, x: Tensor) -> Tensor:
    return affine_family(
        x,
        m.weight,
        m.bias,
        m.eps,
        samples=x.shape[0],
        act=B0_ACT if m.training else B0_EVAL_ACT,
        t=m.v,
        aux=None if m.training else m.running_var,
        running=Running(None, m.running_var, m.momentum) if m.training else None,
    )


@register_kernel(EvoNormB0, "fused", use_fused)
def evonorm_b0_fused(m: EvoNormB0, x: Tensor) -> Tensor:
    coefficients = partial(m.coefficients, m.training)
    y, mean_in, var_in = _EvoNormB0.apply(x, coefficients, m.v, m.weight, m.bias)
    m.track(x, mean_in, var_in)
    return like_input(y, x)


@register_kernel(EvoNormS0, "triton", on_planes)
def evonorm_s0_triton(m: EvoNormS0, x: Tensor) -> Tensor:
    channels = m.num_channels // m.num_groups
    return affine_family(x, m.weight, m.bias, m.eps, channels=channels, act=GATE_ACT, t=m.v)


@register_kernel(EvoNormS0, "fused", use_fused)
def evonorm_s0_fused(m: EvoNormS0, x: Tensor) -> Tensor:
    with torch.autocast(x.device.type, enabled=False):  # statistics in float32, as timm does
        x32 = x.to(at_least_float32(x))
        y = _EvoNormS0.apply(x32, m.v, m.weight, m.bias, m.num_channels // m.num_groups, m.eps)
    return like_input(y, x)
