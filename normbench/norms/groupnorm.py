"""Group Normalization (Wu & He 2018)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from normbench.norms._base import ChannelNorm
from normbench.norms.registry import register_norm


def resolve_groups(num_channels: int, num_groups: int | None, group_size: int | None) -> int:
    """The number of groups for ``num_channels``, from ``num_groups`` or ``group_size`` (not both).

    With fewer channels than ``num_groups`` every channel is its own group (GroupNorm with G = C is
    InstanceNorm), as GN users expect from narrow early layers; otherwise the groups must divide C.
    """
    if group_size is not None:
        if num_groups is not None:
            raise ValueError(
                f"GroupNorm: give num_groups or group_size, not both "
                f"(got num_groups={num_groups}, group_size={group_size})"
            )
        if group_size <= 0 or num_channels % group_size:
            raise ValueError(
                f"GroupNorm: num_channels={num_channels} is not divisible by group_size={group_size}"
            )
        return num_channels // group_size
    groups = 32 if num_groups is None else num_groups
    if groups <= 0:
        raise ValueError(f"GroupNorm: num_groups must be positive, got {groups}")
    groups = min(groups, num_channels)
    if num_channels % groups:
        raise ValueError(f"GroupNorm: num_channels={num_channels} is not divisible by num_groups={groups}")
    return groups


@register_norm(
    "groupnorm",
    aliases=("gn",),
    paper="Wu & He 2018, Group Normalization, arXiv:1803.08494",
    min_spatial_positions=0,
)
class GroupNorm(ChannelNorm):
    r"""Group Normalization: per-sample statistics over groups of C/G channels and all positions.

    .. math::
        y_{ngc} = \frac{x_{ngc} - \mathrm{E}_{c\in g,s}[x_{ng}]}
        {\sqrt{\mathrm{Var}_{c\in g,s}[x_{ng}] + \epsilon}} \cdot \gamma_c + \beta_c

    with the biased variance; equals ``torch.nn.GroupNorm(G, C)``. G = 1 is LayerNorm, G = C is
    InstanceNorm. Set ``num_groups`` (default 32, as in the paper) or ``group_size`` (channels per
    group), not both. When C < num_groups, G = C (each channel a group); otherwise C must be divisible
    by G or construction raises ``ValueError`` naming both numbers. On (N, C) features with G = C each
    group holds one value and normalizes to β: use fewer groups there.

    Shape:
        Input (N, C, *) with 0-3 spatial dims; output the same shape.
    """

    def __init__(
        self,
        num_channels: int,
        num_groups: int | None = 32,
        group_size: int | None = None,
        eps: float = 1e-5,
        affine: bool = True,
    ) -> None:
        super().__init__(num_channels, eps, affine)
        if group_size is not None and num_groups == 32:
            num_groups = None  # the default yields to an explicit group_size
        self.num_groups = resolve_groups(num_channels, num_groups, group_size)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, {super().extra_repr()}"
