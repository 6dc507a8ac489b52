"""Ghost BatchNorm's accelerated forms (training with several ghost batches): the affine family on Triton,
which cuts the ghost batches and moves the running statistics inside its launches, and the ghost batches
through the fused CPU :class:`~normbench.accel.cpu.GroupAffine` with no copies."""

from __future__ import annotations

from functools import partial

from torch import Tensor

from normbench.accel import register_kernel
from normbench.accel._triton import Running
from normbench.accel.cpu import group_affine_fused, use_fused
from normbench.accel.planes import affine_family, on_planes
from normbench.norms.ghost_batchnorm import GhostBatchNorm


@register_kernel(GhostBatchNorm, "triton", on_planes)
def ghost_batchnorm_triton(m: GhostBatchNorm, x: Tensor) -> Tensor:
    running = None
    if m.track_running_stats:
        running = Running(m.running_mean, m.running_var, m.momentum, m.num_batches_tracked.add_(1))
    return affine_family(x, m.weight, m.bias, m.eps, samples=m.ghost_batch_size, running=running)


def _fused_chunk(m: GhostBatchNorm, chunk: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Ghost batches of ``size`` samples: output, and each ghost batch's mean and unbiased variance, (k, C)."""
    y, mean, var = group_affine_fused(chunk, m.coefficients, m.weight, m.bias, samples=size)
    count = chunk[:size].numel() // m.num_channels
    return y, mean, var * (count / max(count - 1, 1))


@register_kernel(GhostBatchNorm, "fused", use_fused)
def ghost_batchnorm_fused(m: GhostBatchNorm, x: Tensor) -> Tensor:
    return m.ghost_batches(x, partial(_fused_chunk, m))
