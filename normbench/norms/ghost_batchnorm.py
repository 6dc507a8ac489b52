"""Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from normbench.norms._base import like_input, move_towards
from normbench.norms._stats import at_least_float32, last_group, standardizing
from normbench.norms.batchnorm import BatchNorm
from normbench.norms.registry import register_norm


@register_norm(
    "ghost_batchnorm",
    aliases=("ghostbn", "gbn"),
    paper="Hoffer, Hubara & Soudry 2017, Train longer, generalize better, arXiv:1705.08741",
    batch_dependent=True,
    running_stats=True,
    population="wide",
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
    a smaller ghost batch (a single leftover sample joins the ghost batch before it: one sample has no
    batch statistics); with ``ghost_batch_size`` >= N it is BatchNorm. Buffers and state dict are
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
        n, g = x.shape[0], self.ghost_batch_size
        if not self.training or n <= g:
            return super().forward(x)
        self.check_input(x)
        if g == 1 and x[0, 0].numel() == 1:  # torch's own error would not name the option
            raise ValueError(
                f"GhostBatchNorm: ghost_batch_size=1 normalizes each sample alone, which has one value "
                f"per channel in input of shape {tuple(x.shape)}; use ghost_batch_size >= 2"
            )
        if (y := self.accelerated(x)) is not None:
            return y
        return self.ghost_batches(x, self._folded)

    def ghost_batches(
        self, x: Tensor, normalize: Callable[[Tensor, int], tuple[Tensor, Tensor, Tensor]]
    ) -> Tensor:
        """``x`` cut into ghost batches, each chunk of equal ghost batches normalized by ``normalize(chunk,
        m)`` (output and each ghost batch's mean and unbiased variance), and the running statistics
        moved."""
        n, g = x.shape[0], self.ghost_batch_size
        last = last_group(n, g)
        full = n if n - last == g else last  # the samples in ghost batches of g
        chunks = [(x[:full], g)] if full else []
        if full < n:  # the last ghost batch is smaller (or g + 1)
            chunks.append((x[full:], n - full))
        parts = [normalize(chunk, m) for chunk, m in chunks]
        if self.track_running_stats:  # towards the average over ghost batches of their mean and unbiased var
            with torch.no_grad():
                rate = self.step_rate()
                move_towards(self.running_mean, torch.cat([mean for _, mean, _ in parts]).mean(0), rate)
                move_towards(self.running_var, torch.cat([var for _, _, var in parts]).mean(0), rate)
        outs = [y for y, _, _ in parts]
        return like_input(torch.cat(outs) if len(outs) > 1 else outs[0], x)

    def _folded(self, chunk: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor]:
        """The same by one native batch_norm call, the ghost batches folded into channels,
        (k·m, C, *S) -> (m, k·C, *S): on small CPU inputs the copies cost less than a Function's Python
        (on CUDA, host time of about a dozen small ops, more than the Triton path's launches); large CPU
        inputs take :class:`normbench.accel.cpu.GroupAffine` instead (``fused`` kernels)."""
        k, c, rest = chunk.shape[0] // m, self.num_channels, chunk.shape[2:]
        folded = chunk.reshape(k, m, c, *rest).transpose(0, 1).reshape(m, k * c, *rest)
        weight = None if self.weight is None else self.weight.repeat(k)
        bias = None if self.bias is None else self.bias.repeat(k)
        # momentum 1: these buffers receive each ghost batch's mean and unbiased variance
        stats = at_least_float32(chunk)  # float32 statistics under autocast
        mean, var = chunk.new_zeros(k * c, dtype=stats), chunk.new_ones(k * c, dtype=stats)
        y = F.batch_norm(folded, mean, var, weight, bias, True, 1.0, self.eps)
        return y.reshape(m, k, c, *rest).transpose(0, 1).reshape(chunk.shape), mean.view(k, c), var.view(k, c)

    def coefficients(
        self, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """(scale, shift) per ghost batch and channel from its moments, (K, C) each."""
        return standardizing(mean, var, self.eps, weight, bias)

    def extra_repr(self) -> str:
        return f"ghost_batch_size={self.ghost_batch_size}, {super().extra_repr()}"
