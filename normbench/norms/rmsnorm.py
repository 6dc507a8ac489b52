"""Root Mean Square Layer Normalization (Zhang & Sennrich 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normbench.norms._base import ChannelNorm
from normbench.norms.registry import register_norm


@register_norm(
    "rmsnorm",
    aliases=("rms",),
    paper="Zhang & Sennrich 2019, Root Mean Square Layer Normalization, arXiv:1910.07467",
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
        if x.dim() == 2:
            y = F.rms_norm(x, (self.num_channels,), self.weight, self.eps)
        else:
            y = F.rms_norm(x, tuple(x.shape[1:]), None, self.eps)
            if self.weight is not None:
                y = y * self.weight.view(1, -1, *[1] * (x.dim() - 2))
        return y if self.bias is None else y + self.bias.view(1, -1, *[1] * (x.dim() - 2))
