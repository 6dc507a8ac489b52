"""Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from normbench.norms._base import group_affine, group_view
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
        n, g = x.shape[0], self.ghost_batch_size
        if not self.training or n <= g:
            return super().forward(x)
        self.check_input(x)
        full = n - n % g
        chunks = [(x[:full], g)] + ([(x[full:], n - full)] if full < n else [])  # the last may be smaller
        parts = [
            group_affine(group_view(c, samples=m), self._coefficients, self.weight, self.bias)
            for c, m in chunks
        ]
        if self.track_running_stats:
            self._track(
                [
                    (mean, var, m * x[0, 0].numel())
                    for (_, mean, var), (_, m) in zip(parts, chunks, strict=True)
                ]
            )
        outs = [y.view(c.shape) for (y, _, _), (c, _) in zip(parts, chunks, strict=True)]
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @torch.no_grad()
    def _track(self, parts: list[tuple[Tensor, Tensor, int]]) -> None:
        """Move the running statistics towards the average over ghost batches of their mean and
        unbiased variance; ``parts`` holds (K, C) moments of ghost batches of ``count`` values each."""
        ghosts = sum(mean.shape[0] for mean, _, _ in parts)
        mean = sum(mean.sum(0) for mean, _, _ in parts) / ghosts
        var = sum(var.sum(0) * (count / max(count - 1, 1)) for _, var, count in parts) / ghosts
        rate = self.step_rate()
        self.running_mean.lerp_(mean, rate)
        self.running_var.lerp_(var, rate)

    def _coefficients(
        self, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """(scale, shift) per ghost batch and channel from its moments, (K, C) each."""
        scale = torch.rsqrt(var + self.eps)
        if weight is not None:
            scale = scale * weight
        shift = -mean * scale
        return scale, shift if bias is None else shift + bias

    def extra_repr(self) -> str:
        return f"ghost_batch_size={self.ghost_batch_size}, {super().extra_repr()}"
