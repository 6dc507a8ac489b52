"""Layer Normalization over channels and positions (Ba et al. 2016)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from normbench.norms._base import ChannelNorm
from normbench.norms.groupnorm import GroupNorm
from normbench.norms.registry import register_norm


def _widen(member: LayerNorm, k: int) -> nn.Module:
    """k LayerNorms side by side are GroupNorm with one group per member."""
    return GroupNorm(k * member.num_channels, num_groups=k, eps=member.eps, affine=member.affine)


@register_norm(
    "layernorm",
    aliases=("ln",),
    paper="Ba, Kiros & Hinton 2016, Layer Normalization, arXiv:1607.06450",
    population="wide",
    widen=_widen,
)
class LayerNorm(ChannelNorm):
    r"""Layer Normalization: per-sample statistics over C and all spatial positions.

    .. math::
        y_{n} = \frac{x_{n} - \mathrm{E}_{c,s}[x_{n}]}{\sqrt{\mathrm{Var}_{c,s}[x_{n}] + \epsilon}}
        \cdot \gamma_c + \beta_c

    with the biased variance. This is GroupNorm with one group (Wu & He 2018, Sec. 3.1) and equals
    ``torch.nn.GroupNorm(1, C)``; on (N, C) features it equals ``torch.nn.LayerNorm(C)``. The affine
    parameters are per channel, not per element. For Transformer token tensors (N, L, C) wrap it in
    :class:`normbench.ChannelLast` to get ``torch.nn.LayerNorm(C)`` per token.

    Shape:
        Input (N, C, *) with 0-3 spatial dims; output the same shape.
    """

    native_kernel = True  # torch's group_norm below normbench.accel.planes.NATIVE_BELOW elements

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_channels, eps, affine)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if (y := self.accelerated(x)) is not None:
            return y
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)
