"""EvoNorm-B0 and EvoNorm-S0 (Liu, Brock, Simonyan & Le 2020): normalization and activation in one."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normbench.norms._base import ChannelNorm, InstanceMoments
from normbench.norms.groupnorm import resolve_groups
from normbench.norms.registry import register_norm

PAPER = "Liu, Brock, Simonyan & Le 2020, Evolving Normalization-Activation Layers, arXiv:2004.02967"


class _EvoNormB0Core(torch.autograd.Function):
    """y = x / max(a_c, v_c x + s_nc) · w_c + b_c given the batch term a and instance term s.

    Backward, with d = max(·), m = [v x + s > a] and h = −g w x / d²: ∂L/∂x = g w / d + h m v,
    ∂L/∂s = Σ_pos h m, ∂L/∂a = Σ_{n,pos} h (1 − m), ∂L/∂v = Σ h m x, ∂L/∂w = Σ g x / d, ∂L/∂b = Σ g.
    """

    @staticmethod
    def forward(ctx, x, v, s, a, weight, bias):
        n, c = x.shape[:2]
        tail = [1] * (x.dim() - 2)
        den = (x * v.view(1, c, *tail)).add_(s.view(n, c, *tail)).clamp_(min=a.view(1, c, *tail))
        w = weight if weight is not None else x.new_ones(c)
        y = (x / den).mul_(w.view(1, c, *tail))
        if bias is not None:
            y.add_(bias.view(1, c, *tail))
        ctx.save_for_backward(x, den, v, a, w)
        ctx.has_affine = weight is not None
        return y

    @staticmethod
    def backward(ctx, g):
        x, den, v, a, w = ctx.saved_tensors
        c = x.shape[1]
        tail = [1] * (x.dim() - 2)
        spatial = tuple(range(2, x.dim()))
        h = (g * x).div_(den)  # g x / d
        g_w = h.sum(dim=(0, *spatial)) if ctx.has_affine else None
        h.mul_(w.view(1, c, *tail)).div_(den).neg_()  # -g w x / d²
        hm = (den - a.view(1, c, *tail)).sign_().mul_(h)  # h · [instance branch]: d >= a everywhere
        h_sum = h.sum(dim=spatial) if spatial else h
        hm_sum = hm.sum(dim=spatial) if spatial else hm.clone()
        gx = (g * w.view(1, c, *tail)).div_(den).addcmul_(hm, v.view(1, c, *tail))
        g_v = hm.mul_(x).sum(dim=(0, *spatial))
        g_b = g.sum(dim=(0, *spatial)) if ctx.has_affine else None
        return gx, g_v, hm_sum, (h_sum - hm_sum).sum(0), g_w, g_b


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
        mean_in, var_in = InstanceMoments.apply(x)  # (N, C)
        if self.training:  # batch moments from the instance moments (law of total variance)
            mean_b = mean_in.mean(0)
            batch_var = (var_in + mean_in.square()).mean(0) - mean_b.square()
            with torch.no_grad():
                n = x.numel() / x.shape[1]
                self.running_var.lerp_(batch_var * n / max(n - 1, 1), self.momentum)
        else:
            batch_var = self.running_var
        a = torch.sqrt(batch_var + self.eps)
        return _EvoNormB0Core.apply(x, self.v, torch.sqrt(var_in + self.eps), a, self.weight, self.bias)


class _EvoNormS0(torch.autograd.Function):
    """y = x · sigmoid(v x) · w_c / std_ng + b_c in few memory passes (std over each sample's group).

    Backward, with σ = sigmoid(v x), u = x σ, a = (g w / std) σ, e = a (1 − σ) x:
    ∂L/∂x = a + e v + k_ng (x − mean_ng) with k = −(Σ_{c∈g} w_c Σ_s g u) / (std³ M),
    ∂L/∂v = Σ e x, ∂L/∂w = Σ g u / std, ∂L/∂b = Σ g (M = elements per group).
    """

    @staticmethod
    def forward(ctx, x, v, weight, bias, groups: int, eps: float):
        n, c = x.shape[:2]
        tail = [1] * (x.dim() - 2)
        xg = x.reshape(n, groups, -1)
        mean = xg.mean(2, keepdim=True)
        m = xg.shape[2]
        inv = torch.rsqrt(torch.linalg.vector_norm(xg - mean, dim=2).square() / m + eps)  # (n, G)
        w = weight if weight is not None else x.new_ones(c)
        scale = inv.repeat_interleave(c // groups, dim=1) * w  # (n, c)
        # in-place after each allocation: on CPU a fresh activation-sized tensor costs page faults
        sig = (x * v.view(1, c, *tail)).sigmoid_()
        y = (x * sig).mul_(scale.view(n, c, *tail))
        if bias is not None:
            y.add_(bias.view(1, c, *tail))
        ctx.save_for_backward(x, sig, mean, inv, scale, v, w)
        ctx.groups, ctx.m, ctx.has_affine = groups, m, weight is not None
        return y

    @staticmethod
    def backward(ctx, g):
        x, sig, mean, inv, scale, v, w = ctx.saved_tensors
        n, c = x.shape[:2]
        groups, tail = ctx.groups, [1] * (x.dim() - 2)
        spatial = tuple(range(2, x.dim()))
        buf = (x * sig).mul_(g)  # g u
        t = buf.sum(dim=spatial) if spatial else buf.clone()  # (n, c)
        a = (g * scale.view(n, c, *tail)).mul_(sig)  # g w σ / std
        e = buf.copy_(sig).neg_().add_(1).mul_(a).mul_(x)  # a (1 - σ) x, in the spent buffer
        coef = -((t * w).reshape(n, groups, -1).sum(2) * inv**3 / ctx.m)  # (n, G)
        gx = (x.reshape(n, groups, -1) - mean).mul_(coef.unsqueeze(2)).reshape(x.shape)
        gx.add_(a).addcmul_(e, v.view(1, c, *tail))
        g_v = e.mul_(x).sum(dim=(0, *spatial))  # e is spent: reuse its memory
        inv_c = inv.repeat_interleave(c // groups, dim=1)
        g_w = (t * inv_c).sum(0) if ctx.has_affine else None
        g_b = g.sum(dim=(0, *spatial)) if ctx.has_affine else None
        return gx, g_v, g_w, g_b, None, None


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
        return _EvoNormS0.apply(x, self.v, self.weight, self.bias, self.num_groups, self.eps)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, {super().extra_repr()}"
