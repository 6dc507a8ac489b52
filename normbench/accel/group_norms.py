"""The ``triton`` forms of the per-sample norms with a native torch kernel (GroupNorm, InstanceNorm,
LayerNorm): the affine family over groups of planes, on inputs of at least
:data:`normbench.accel.planes.NATIVE_BELOW` elements (below it torch's one launch per direction wins)."""

from __future__ import annotations

from torch import Tensor

from normbench.accel import register_kernel
from normbench.accel.planes import affine_family, on_planes
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
