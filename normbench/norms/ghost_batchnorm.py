"""Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normbench.norms.batchnorm import BatchNorm
from normbench.norms.registry import register_norm


@register_norm(
    "ghost_batchnorm",
    aliases=("ghostbn", "gbn"),
    paper="Hoffer, Hubara & Soudry 2017, Train longer, generalize better, arXiv:1705.08741",
    batch_dependent=True,
    running_stats=True,
)
class GhostBatchNorm(BatchNorm):
    r"""Batch Normalization over ghost batches: the batch is cut into consecutive chunks of
    ``ghost_batch_size`` samples, each normalized with its own statistics.

    .. math::
        y_{i} = \frac{x_i - \mathrm{E}_{g(i)}[x]}{\sqrt{\mathrm{Var}_{g(i)}[x] + \epsilon}} \cdot \gamma
        + \beta

    where :math:`g(i)` is the ghost batch of sample :math:`i` (statistics per channel over its samples
    and positions, biased variance). This decouples the normalization batch from the optimisation
    batch. The running statistics move once per forward, towards the average over ghost batches of
    their mean and unbiased variance (with ``momentum``, or cumulatively when ``None``); eval mode
    uses them exactly like BatchNorm. A batch that is not a multiple of ``ghost_batch_size`` ends with
    a smaller ghost batch; with ``ghost_batch_size`` >= N it is BatchNorm. Buffers and state dict are
    BatchNorm's.

    Shape:
        Input (N, C, *) with 0-3 spatial dims; output the same shape.
    """

    def __init__(
        self,
        num_channels: int,
        ghost_batch_size: int = 32,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(num_channels, eps, momentum, affine, track_running_stats)
        if ghost_batch_size < 1:
            raise ValueError(f"GhostBatchNorm: ghost_batch_size must be >= 1, got {ghost_batch_size}")
        self.ghost_batch_size = ghost_batch_size

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if not self.training or n <= self.ghost_batch_size:
            return super().forward(x)
        self.check_input(x)
        c, g = self.num_channels, self.ghost_batch_size
        update = self.track_running_stats
        factor = self.step_rate() if update else 0.0
        chunks = [x[: n - n % g], x[n - n % g :]] if n % g else [x]
        outs, means, variances = [], [], []
        for chunk in chunks:
            k = chunk.shape[0] // g if chunk.shape[0] >= g else 1
            # (k·m, C, *S) -> (m, k·C, *S): one batch_norm call gives every ghost batch its own stats
            m = chunk.shape[0] // k
            folded = chunk.reshape(k, m, *chunk.shape[1:]).transpose(0, 1).reshape(m, k * c, *chunk.shape[2:])
            rm = self.running_mean.repeat(k) if update else None
            rv = self.running_var.repeat(k) if update else None
            w = self.weight.repeat(k) if self.weight is not None else None
            b = self.bias.repeat(k) if self.bias is not None else None
            y = F.batch_norm(folded, rm, rv, w, b, True, factor, self.eps)
            outs.append(y.reshape(m, k, *chunk.shape[1:]).transpose(0, 1).reshape(chunk.shape))
            if update:
                means.append(rm.view(k, c))
                variances.append(rv.view(k, c))
        if update:  # each ghost batch moved its copy of the buffers; keep their average
            self.running_mean.copy_(torch.cat(means).mean(0))
            self.running_var.copy_(torch.cat(variances).mean(0))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def extra_repr(self) -> str:
        return f"ghost_batch_size={self.ghost_batch_size}, {super().extra_repr()}"
