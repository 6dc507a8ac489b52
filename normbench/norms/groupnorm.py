"""Group Normalization (Wu & He 2018)."""

from __future__ import annotations

import warnings

import torch.nn.functional as F
from torch import Tensor

from normbench.norms._base import ChannelNorm, wide_copy
from normbench.norms.registry import register_norm

DEFAULT_GROUPS = 32  # Wu & He 2018's default


def default_groups(num_channels: int) -> int:
    """32 groups, but never fewer than 2 channels per group (1 would be InstanceNorm, which Wu & He
    2018, Sec. 4 found worse): the largest divisor of C up to min(32, C / 2), at least 1."""
    cap = max(1, min(DEFAULT_GROUPS, num_channels // 2))
    return next(g for g in range(cap, 0, -1) if num_channels % g == 0)


def resolve_groups(num_channels: int, num_groups: int | None, group_size: int | None) -> int:
    """The number of groups for ``num_channels``, from ``num_groups`` or ``group_size`` (not both), or
    :func:`default_groups` when neither is given.

    With fewer channels than ``num_groups`` every channel is its own group (GroupNorm with G = C is
    InstanceNorm); otherwise the groups must divide C.
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
    if num_groups is None:
        return default_groups(num_channels)
    groups = num_groups
    if groups <= 0:
        raise ValueError(f"GroupNorm: num_groups must be positive, got {groups}")
    groups = min(groups, num_channels)
    if num_channels % groups:
        raise ValueError(f"GroupNorm: num_channels={num_channels} is not divisible by num_groups={groups}")
    return groups


_WARNED: set[int] = set()  # channel counts already warned about


@register_norm(
    "groupnorm",
    aliases=("gn",),
    paper="Wu & He 2018, Group Normalization, arXiv:1803.08494",
    min_spatial_positions=0,
    population="wide",
    widen=lambda member, k: wide_copy(member, k, "num_groups"),
)
class GroupNorm(ChannelNorm):
    r"""Group Normalization: per-sample statistics over groups of C/G channels and all positions.

    .. math::
        y_{ngc} = \frac{x_{ngc} - \mathrm{E}_{c\in g,s}[x_{ng}]}
        {\sqrt{\mathrm{Var}_{c\in g,s}[x_{ng}] + \epsilon}} \cdot \gamma_c + \beta_c

    with the biased variance; equals ``torch.nn.GroupNorm(G, C)``. G = 1 is LayerNorm, G = C is
    InstanceNorm. Set ``num_groups`` or ``group_size`` (channels per group), not both; by default
    G = 32 as in the paper, but never fewer than 2 channels per group (:func:`default_groups`: 16
    groups on 32 channels). An explicit ``num_groups`` >= C gives G = C and warns once per channel
    count that the layer is InstanceNorm; otherwise C must be divisible by G or construction raises
    ``ValueError`` naming both numbers. :meth:`extra_metrics` reports channels per group, which runs
    record per layer.

    Shape:
        Input (N, C, *) with 0-3 spatial dims; output the same shape.
    """

    native_kernel = True  # torch's group_norm below normbench.accel.planes.NATIVE_BELOW elements

    def __init__(
        self,
        num_channels: int,
        num_groups: int | None = None,
        group_size: int | None = None,
        eps: float = 1e-5,
        affine: bool = True,
    ) -> None:
        super().__init__(num_channels, eps, affine)
        self.num_groups = resolve_groups(num_channels, num_groups, group_size)
        if self.num_groups == num_channels > 1 and num_channels not in _WARNED:
            _WARNED.add(num_channels)
            warnings.warn(
                f"groupnorm with {self.num_groups} groups on {num_channels} channels has one channel per "
                "group: it is InstanceNorm; set norm.num_groups or norm.group_size for 2+ channels per group",
                UserWarning,
                stacklevel=2,
            )

    def extra_metrics(self) -> dict[str, float]:
        return {"channels_per_group": self.num_channels / self.num_groups}

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if (y := self.accelerated(x)) is not None:
            return y
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, {super().extra_repr()}"
