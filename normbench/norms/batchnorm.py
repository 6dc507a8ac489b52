"""Batch Normalization (Ioffe & Szegedy 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normbench.norms._base import ChannelNorm, move_towards
from normbench.norms.registry import register_norm


@register_norm(
    "batchnorm",
    aliases=("bn",),
    paper="Ioffe & Szegedy 2015, Batch Normalization, arXiv:1502.03167",
    batch_dependent=True,
    running_stats=True,
    population="wide",
)
class BatchNorm(ChannelNorm):
    r"""Batch Normalization: per-channel statistics over the batch and all spatial positions.

    .. math::
        y = \frac{x - \mathrm{E}_B[x]}{\sqrt{\mathrm{Var}_B[x] + \epsilon}} \cdot \gamma + \beta

    In training mode the mean and the *biased* variance are taken per channel over N and every spatial
    position. The running estimates are updated as
    ``running = (1 - momentum) * running + momentum * batch_stat`` with the *unbiased* variance
    (factor ``n / (n - 1)``), or as the cumulative average when ``momentum=None``; eval mode
    normalizes with them. With ``track_running_stats=False`` batch statistics are used in both modes.
    Identical to ``torch.nn.BatchNorm{1,2,3}d`` (same buffers: ``running_mean``, ``running_var``,
    ``num_batches_tracked``), but one module accepts every rank.

    With ``positions=P`` (an ablation, not the paper's layer) the statistics are not pooled over
    positions: each (channel, position) pair of an input with exactly P positions per channel is
    normalized over the batch alone, as if every position were a feature of an MLP, with running
    statistics per channel and position (buffers of C·P values); γ and β stay per channel. It tests
    why conv nets tolerate small batches: with pooling, a channel's statistics come from N·P values;
    without it, from N.

    Args:
        num_channels: C.
        eps: added to the variance.
        momentum: EMA rate of the running statistics, or ``None`` for a cumulative average.
        affine: learnable per-channel ``weight`` (γ) and ``bias`` (β).
        track_running_stats: keep running statistics for eval mode.
        positions: 0 (pool over positions: BatchNorm), or the number of positions P of every input,
            each normalized on its own (see above).

    Shape:
        Input (N, C, *) with 0-3 spatial dims; output the same shape.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        positions: int = 0,
    ) -> None:
        super().__init__(num_channels, eps, affine)
        self.check_momentum(momentum, none_allowed=True)
        if isinstance(positions, bool) or not isinstance(positions, int) or positions < 0:
            raise ValueError(
                f"BatchNorm: positions must be 0 (pooled) or a number of positions >= 1, got {positions!r}"
            )
        self.momentum = momentum
        self.track_running_stats = track_running_stats
        self.positions = positions
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_channels * max(positions, 1)))
            self.register_buffer("running_var", torch.ones(num_channels * max(positions, 1)))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def step_rate(self) -> float:
        """Count one training batch and return this step's running-average rate: ``momentum``, or
        1 / batches seen for the cumulative average (``momentum=None``)."""
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    @torch.no_grad()
    def track(self, mean: Tensor, biased_var: Tensor, count: float) -> None:
        """Move the running statistics towards a batch's mean and (unbiased) variance over ``count``
        values per channel, as ``F.batch_norm`` does; for subclasses that compute their own statistics."""
        rate = self.step_rate()
        move_towards(self.running_mean, mean, rate)
        move_towards(self.running_var, biased_var * count / max(count - 1, 1), rate)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        update = self.training and self.track_running_stats
        factor = self.step_rate() if update else 0.0
        use_batch_stats = self.training or not self.track_running_stats
        running = (self.running_mean, self.running_var) if not self.training or update else (None, None)
        if not self.positions:
            return F.batch_norm(x, *running, self.weight, self.bias, use_batch_stats, factor, self.eps)
        if x.shape[2:].numel() != self.positions:
            raise ValueError(
                f"BatchNorm(positions={self.positions}): the input has {x.shape[2:].numel()} positions per "
                f"channel (shape {tuple(x.shape)}); positions must match every input's"
            )
        y = F.batch_norm(x.reshape(len(x), -1), *running, None, None, use_batch_stats, factor, self.eps)
        y = y.reshape(x.shape)
        if self.weight is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def extra_repr(self) -> str:
        text = f"{super().extra_repr()}, momentum={self.momentum}, track_running_stats={self.track_running_stats}"
        return text + (f", positions={self.positions}" if self.positions else "")
