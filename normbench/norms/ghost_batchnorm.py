"""Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from normbench.norms._base import InstanceAffine, pooled
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
        if not self.training or x.shape[0] <= self.ghost_batch_size:
            return super().forward(x)
        self.check_input(x)
        y, mean_in, var_in = InstanceAffine.apply(x, self._coefficients, self.weight, self.bias)
        if self.track_running_stats:
            with torch.no_grad():
                mean, var, samples = self.ghost_moments(mean_in, var_in)
                values = samples.to(var.dtype) * (x.numel() // (x.shape[0] * x.shape[1]))
                unbiased = var * (values / (values - 1).clamp(min=1))[:, None]
                rate = self.step_rate()
                self.running_mean.lerp_(mean.mean(0), rate)
                self.running_var.lerp_(unbiased.mean(0), rate)
        return y

    def ghost_moments(self, mean_in: Tensor, var_in: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean and biased variance per ghost batch and channel, (G, C) each, from the instance moments
        (N, C), and the number of samples in each ghost batch, (G,)."""
        n, g = mean_in.shape[0], self.ghost_batch_size
        full = n - n % g
        groups = [(mean_in[:full].unflatten(0, (-1, g)), var_in[:full].unflatten(0, (-1, g)))]
        if full < n:
            groups.append((mean_in[full:][None], var_in[full:][None]))
        stats = [pooled(m, v, 1) for m, v in groups]
        samples = torch.tensor([g] * (full // g) + [n - full] * (full < n), device=mean_in.device)
        return (
            torch.cat([m for m, _ in stats]).squeeze(1),
            torch.cat([v for _, v in stats]).squeeze(1),
            samples,
        )

    def _coefficients(
        self, mean_in: Tensor, var_in: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """(scale, shift) per sample and channel: each sample standardized with its ghost batch's moments."""
        mean, var, samples = self.ghost_moments(mean_in, var_in)
        scale = torch.rsqrt(var + self.eps).repeat_interleave(samples, dim=0)
        if weight is not None:
            scale = scale * weight
        shift = -mean.repeat_interleave(samples, dim=0) * scale
        return scale, shift if bias is None else shift + bias

    def extra_repr(self) -> str:
        return f"ghost_batch_size={self.ghost_batch_size}, {super().extra_repr()}"
