"""Instance Normalization (Ulyanov, Vedaldi & Lempitsky 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normbench.norms._base import ChannelNorm, like_input
from normbench.norms.registry import register_norm


@register_norm(
    "instancenorm",
    aliases=("in",),
    paper="Ulyanov, Vedaldi & Lempitsky 2016, Instance Normalization, arXiv:1607.08022",
    min_spatial_positions=2,
    population="wide",
)
class InstanceNorm(ChannelNorm):
    r"""Instance Normalization: statistics per sample and channel over the spatial positions.

    .. math::
        y_{nc} = \frac{x_{nc} - \mathrm{E}_{s}[x_{nc}]}{\sqrt{\mathrm{Var}_{s}[x_{nc}] + \epsilon}}
        \cdot \gamma_c + \beta_c

    with the biased variance; it uses the instance statistics in train and eval mode (no running
    statistics), like ``torch.nn.InstanceNorm{1,2,3}d(C, affine=True)``. Unlike torch, an input with
    fewer than 2 spatial positions per channel, e.g. (N, C) features, is a ``ValueError`` instead of a
    silent all-zeros output.

    Shape:
        Input (N, C, *) with 1-3 spatial dims; output the same shape.
    """

    min_spatial_positions = 2

    native_kernel = True  # torch's instance/group norm below normbench.accel.planes.NATIVE_BELOW elements

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_channels, eps, affine)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if x.numel() == 0:
            return self.empty_output(x)
        if (y := self.accelerated(x)) is not None:
            return y
        if x.is_cuda and x.dtype == torch.float32:
            # GroupNorm with one channel per group is this; on an H100 its kernel ran float32 inputs
            # 1.35x faster (bfloat16 ones 2x slower: autocast runs group_norm in float32)
            return like_input(F.group_norm(x, self.num_channels, self.weight, self.bias, self.eps), x)
        return like_input(F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps), x)
