"""Faster forms of the per-sample norms with a native torch kernel (GroupNorm, InstanceNorm, LayerNorm).

``triton``: the affine family over groups of planes, on CUDA inputs of at least
:data:`normbench.accel.planes.NATIVE_BELOW` elements (below it torch's one launch per direction wins).

``fused``: GroupNorm and LayerNorm on (N, C) features on the CPU (a recurrent net's gates; a wide
population's LayerNorms, which are GroupNorm with one group per member) as torch's ``layer_norm``
kernel over the (N, G, C/G) view, then the per-channel affine: torch's ``group_norm`` CPU kernel is
slower on these inputs (reports/bench/population_seq_lstm.md: the recurrent LayerNorm population with
and without this form). Every G takes the same two operations, so a wide population's members and
their separate runs normalize with the same arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normbench.accel import register_kernel
from normbench.accel.planes import affine_family, on_planes
from normbench.norms._stats import vmapped
from normbench.norms.groupnorm import GroupNorm
from normbench.norms.instancenorm import InstanceNorm
from normbench.norms.layernorm import LayerNorm


@register_kernel(GroupNorm, "triton", on_planes)
def groupnorm_triton(m: GroupNorm, x: Tensor) -> Tensor:
    return affine_family(x, m.weight, m.bias, m.eps, channels=m.num_channels // m.num_groups)


@register_kernel(InstanceNorm, "triton", on_planes)
def instancenorm_triton(m: InstanceNorm, x: Tensor) -> Tensor:
    return affine_family(x, m.weight, m.bias, m.eps)


@register_kernel(LayerNorm, "triton", on_planes)
def layernorm_triton(m: LayerNorm, x: Tensor) -> Tensor:
    return affine_family(x, m.weight, m.bias, m.eps, channels=m.num_channels)


def on_cpu_features(m: GroupNorm | LayerNorm, x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dim() == 2 and not vmapped(x)


def _features_by_layer_norm(x: Tensor, groups: int, m: GroupNorm | LayerNorm) -> Tensor:
    n, c = x.shape
    y = F.layer_norm(x.view(n, groups, c // groups), (c // groups,), None, None, m.eps).view(n, c)
    return y if m.weight is None else torch.addcmul(m.bias, y, m.weight)


@register_kernel(GroupNorm, "fused", on_cpu_features)
def groupnorm_features(m: GroupNorm, x: Tensor) -> Tensor:
    return _features_by_layer_norm(x, m.num_groups, m)


@register_kernel(LayerNorm, "fused", on_cpu_features)
def layernorm_features(m: LayerNorm, x: Tensor) -> Tensor:
    return _features_by_layer_norm(x, 1, m)
