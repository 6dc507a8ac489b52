"""Batch Renormalization's accelerated form in training: the affine family on Triton, r and d formed
inside the kernels and the running statistics moved by the same launch."""

from __future__ import annotations

import torch
from torch import Tensor

from normbench.accel import register_kernel
from normbench.accel._triton import Running
from normbench.accel.planes import RENORM_ACT, affine_family, on_planes
from normbench.norms.batchrenorm import BatchRenorm


@register_kernel(BatchRenorm, "triton", on_planes)
def batchrenorm_triton(m: BatchRenorm, x: Tensor) -> Tensor:
    running_mean, running_var, batches = m.running_mean, m.running_var, m.num_batches_tracked
    # what this step's r and d are formed from, as the kernels and the backward need it beside the
    # update (one dtype: a cat that promotes the step costs several times more host time)
    frozen = torch.cat((running_mean, running_var, m.schedule()))
    step = batches.clone()
    return affine_family(
        x, m.weight, m.bias, m.eps, samples=x.shape[0], act=RENORM_ACT, t=frozen, aux=step,
        running=Running(running_mean, running_var, m.momentum, batches.add_(1)),
    )  # fmt: skip
