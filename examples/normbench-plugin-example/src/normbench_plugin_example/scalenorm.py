"""ScaleNorm (Nguyen & Salazar 2019) as a third-party normbench plugin."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from normbench import register_norm


@register_norm("scalenorm", paper="Nguyen & Salazar 2019, Transformers without Tears, arXiv:1910.05895")
class ScaleNorm(nn.Module):
    r"""ScaleNorm: project each sample onto a sphere of learned radius g.

    .. math::
        y_n = g \cdot \frac{x_n}{\max(\lVert x_n \rVert_2, \epsilon)}

    with the norm over C and all positions of sample n; g is one learned scalar, initialised to
    sqrt(number of normalized elements per position, i.e. C). Batch-independent.

    Shape:
        Input (N, C, *) with 0-3 spatial dims; output the same shape.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.g = nn.Parameter(torch.tensor(math.sqrt(num_channels)))

    def forward(self, x: Tensor) -> Tensor:
        if not 2 <= x.dim() <= 5 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"ScaleNorm: expected input of shape (N, {self.num_channels}, *spatial), got {tuple(x.shape)}"
            )
        norm = x.flatten(1).norm(dim=1).clamp_min(self.eps).view(-1, *[1] * (x.dim() - 1))
        return self.g * x / norm
