"""Root Mean Square Layer Normalization (Zhang & Sennrich 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normbench.accel.compiled import formula
from normbench.norms._base import ChannelNorm, like_input
from normbench.norms._stats import at_least_float32
from normbench.norms.registry import register_norm


def _channel_first_rms_norm(x: Tensor, w: Tensor, eps: float) -> Tensor:
    """RMSNorm of (N, C, *) inputs over channels and positions, under autograd; ``w`` shaped (1, C, 1, ...)."""
    x = x.to(at_least_float32(x))  # statistics in float32 under autocast and in float16
    return x * torch.rsqrt(x.square().mean(dim=tuple(range(1, x.dim())), keepdim=True) + eps) * w


class _WideRMSNorm(nn.Module):
    """K RMSNorms side by side on (N, K·C, *): each member's root mean square over its own block of C
    channels and every position (:func:`_channel_first_rms_norm`), then the K·C gains and biases."""

    def __init__(self, member: RMSNorm, k: int) -> None:
        super().__init__()
        self.members, self.eps, self.num_channels = k, member.eps, member.num_channels * k
        self.compiles = member.compiles
        for name in ("weight", "bias"):
            tensor = getattr(member, name)
            setattr(self, name, None if tensor is None else nn.Parameter(tensor.detach().repeat(k)))

    def forward(self, x: Tensor) -> Tensor:
        n, tail = len(x), [1] * (x.dim() - 2)
        blocks = x.reshape(n * self.members, self.num_channels // self.members, *x.shape[2:])
        rms_norm = formula(_channel_first_rms_norm, self.compiles)
        y = rms_norm(blocks, blocks.new_ones(1, blocks.shape[1], *tail), self.eps).reshape(x.shape)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, *tail)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, *tail)
        return like_input(y, x)


@register_norm(
    "rmsnorm",
    aliases=("rms",),
    paper="Zhang & Sennrich 2019, Root Mean Square Layer Normalization, arXiv:1910.07467",
    population="wide",
    widen=lambda member, k: _WideRMSNorm(member, k),
)
class RMSNorm(ChannelNorm):
    r"""RMSNorm: per-sample rescaling by the root mean square over C and all positions, no centring.

    .. math::
        y_{nc} = \frac{x_{nc}}{\sqrt{\mathrm{E}_{c,s}[x_n^2] + \epsilon}} \cdot \gamma_c \;(+\, \beta_c)

    Equals ``torch.nn.RMSNorm(C, eps=eps)`` on (N, C) features (and, through ``ChannelLast``, on
    Transformer tokens). ``affine`` gives the per-channel gain γ (``weight``); the paper has no bias,
    ``bias=True`` adds one.

    Shape:
        Input (N, C, *) with 0-3 spatial dims; output the same shape.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True, bias: bool = False) -> None:
        super().__init__(num_channels, eps, affine)
        if self.bias is not None and not bias:
            self.register_parameter("bias", None)
        elif bias and self.bias is None:
            self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if (y := self.accelerated(x)) is not None:
            return y
        if x.dim() == 2:
            y = F.rms_norm(x, (self.num_channels,), self.weight, self.eps)
        else:
            w = x.new_ones(self.num_channels) if self.weight is None else self.weight
            y = self.formula(_channel_first_rms_norm)(x, w.view(1, -1, *[1] * (x.dim() - 2)), self.eps)
        return self.biased(y, x)

    def biased(self, y: Tensor, x: Tensor) -> Tensor:
        """The normalized and scaled ``y`` plus the bias (if any), in ``x``'s dtype and layout."""
        return like_input(y if self.bias is None else y + self.bias.view(1, -1, *[1] * (x.dim() - 2)), x)
