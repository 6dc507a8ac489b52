"""The no-normalization control."""

from __future__ import annotations

from torch import Tensor

from normbench.norms._base import ChannelNorm
from normbench.norms.registry import register_norm


@register_norm("identity", aliases=("none",), paper="control: no normalization", population="wide")
class Identity(ChannelNorm):
    r"""No normalization: :math:`y = x`, with the same input checks as every plugin.

    The control every comparison needs (Wu & He 2018 Table 1 has none; MNIST-1D's baselines do).

    Shape:
        Input (N, C, *) with 0-3 spatial dims; output the same tensor.
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__(num_channels, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return x

    def extra_repr(self) -> str:
        return f"{self.num_channels}"
