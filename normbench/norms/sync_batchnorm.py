"""BatchNorm with statistics over the union of all processes' batches, on any backend (gloo on CPU)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor

from normbench.norms._stats import at_least_float32
from normbench.norms.batchnorm import BatchNorm
from normbench.norms.registry import register_norm


@register_norm(
    "sync_batchnorm",
    aliases=("syncbn",),
    paper="Ioffe & Szegedy 2015 (arXiv:1502.03167); cross-process statistics as in Peng et al. 2018, MegDet (arXiv:1711.07240)",
    batch_dependent=True,
    running_stats=True,
    population="wide",  # a population trains in one process, where it is BatchNorm over K·C channels
)
class SyncBatchNorm(BatchNorm):
    r"""BatchNorm whose training statistics are all-reduced over the default process group.

    .. math::
        \mu = \frac{\sum_p n_p \mu_p}{\sum_p n_p},\quad
        \sigma^2 = \frac{\sum_p \left[ M_{2,p} + n_p (\mu_p - \mu)^2 \right]}{\sum_p n_p},\quad
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\gamma + \beta

    per channel, where process p holds n_p values per channel with mean :math:`\mu_p` and sum of
    squared deviations :math:`M_{2,p}`: exactly BatchNorm over the union batch, merged as Chan et al.
    1979 (no :math:`E[x^2] - \mu^2` cancellation), in float32 or better whatever the input dtype.
    Two ``all_reduce`` calls from ``torch.distributed.nn`` (differentiable) carry the counts and
    weighted means, then the merged deviations, so gradients flow through the reduction to every
    process's inputs. Works with the gloo backend on CPU (``torch.nn.SyncBatchNorm`` is CUDA-only);
    per-process batches may be uneven or empty. Running statistics (unbiased variance of the union)
    and eval mode are BatchNorm's. Without an initialized process group, or with one process, it is
    BatchNorm. Every process must call it the same number of times (it is a collective).

    Shape:
        Input (N, C, *) with 0-3 spatial dims (N may be 0 on some processes); output the same shape.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (
            not self.training
            or not dist.is_available()
            or not dist.is_initialized()
            or dist.get_world_size() == 1
        ):
            return super().forward(x)
        self.check_input(x)
        c = self.num_channels
        flat = x.transpose(0, 1).reshape(c, -1).to(at_least_float32(x))
        n_local = flat.shape[1]
        local_mean = flat.sum(1) / max(n_local, 1)
        local_m2 = (flat - local_mean[:, None]).square().sum(1)
        count = flat.new_full((1,), float(n_local))
        sums = dist_fn.all_reduce(torch.cat([count, local_mean * n_local]))
        total = sums[0]
        n_total = float(total.detach())
        if n_total < 2:
            raise ValueError(
                f"SyncBatchNorm: expected more than 1 value per channel over all processes, got {int(n_total)}"
            )
        mean = sums[1:] / total
        m2 = dist_fn.all_reduce(local_m2 + n_local * (local_mean - mean).square())
        var = m2 / total
        if self.track_running_stats:
            self.track(mean.detach(), var.detach(), n_total)
        shape = (1, -1, *[1] * (x.dim() - 2))
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        y = (x - mean.view(shape)) * scale.view(shape)  # centred first: no large x * scale - shift
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y.to(x.dtype)
