"""Independent float64 reference formulas for the built-in norms, written from the papers.

Nothing here imports normbench's implementations. Each reference takes the input, the module (only to
read its options, affine parameters and buffers) and whether it runs in training mode, and returns the
expected output. ``reference_running_stats`` replays the running-statistics update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def standardize(x: Tensor, dims: Sequence[int], eps: float) -> Tensor:
    mean = x.mean(dim=tuple(dims), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=tuple(dims), keepdim=True)  # biased, as every paper uses
    return (x - mean) / torch.sqrt(var + eps)


def per_channel(v: Tensor | None, x: Tensor, default: float) -> Tensor:
    if v is None:
        return torch.full((), default, dtype=x.dtype)
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def affine(y: Tensor, m: nn.Module) -> Tensor:
    return y * per_channel(getattr(m, "weight", None), y, 1.0) + per_channel(getattr(m, "bias", None), y, 0.0)


def spatial(x: Tensor) -> list[int]:
    return list(range(2, x.dim()))


def batchnorm(x: Tensor, m: nn.Module, training: bool) -> Tensor:
    if getattr(m, "positions", 0):  # the ablation: each (channel, position) a feature of its own
        flat = x.reshape(len(x), -1, 1)
        if training or m.running_mean is None:
            y = standardize(flat, [0], m.eps)
        else:
            y = (flat - m.running_mean.view(1, -1, 1)) / torch.sqrt(m.running_var.view(1, -1, 1) + m.eps)
        return affine(y.reshape(x.shape), m)
    if training or m.running_mean is None:
        return affine(standardize(x, [0, *spatial(x)], m.eps), m)
    mean = per_channel(m.running_mean, x, 0.0)
    var = per_channel(m.running_var, x, 1.0)
    return affine((x - mean) / torch.sqrt(var + m.eps), m)


def ghostbatchnorm(x: Tensor, m: nn.Module, training: bool) -> Tensor:
    if not training:
        return batchnorm(x, m, False)
    return torch.cat(
        [
            affine(standardize(part, [0, *spatial(x)], m.eps), m)
            for part in ghost_batches(x, m.ghost_batch_size)
        ]
    )


def ghost_batches(x: Tensor, g: int) -> list[Tensor]:
    """Consecutive batches of g samples; the last smaller, and a single leftover sample in the one before."""
    starts = list(range(0, len(x), g))
    if len(x) % g == 1 and len(starts) > 1:
        starts.pop()
    return [x[a:b] for a, b in zip(starts, [*starts[1:], len(x)], strict=True)]


def batchrenorm(x: Tensor, m: nn.Module, training: bool) -> Tensor:
    """Ioffe 2017, Algorithm 1, with the paper's linear ramps of r_max and d_max after warm-up."""
    if not training:
        return batchnorm(x, m, False)
    step = int(m.num_batches_tracked)

    def ramp(end: int, final: float, initial: float) -> float:
        if step < m.warmup_steps:
            return initial
        if end <= m.warmup_steps:
            return final
        return initial + (final - initial) * min(1.0, (step - m.warmup_steps) / (end - m.warmup_steps))

    r_max, d_max = ramp(m.r_max_steps, m.r_max, 1.0), ramp(m.d_max_steps, m.d_max, 0.0)
    dims = [0, *spatial(x)]
    mu_b = x.mean(dim=dims, keepdim=True)
    sigma_b = torch.sqrt(((x - mu_b) ** 2).mean(dim=dims, keepdim=True) + m.eps)
    mu = per_channel(m.running_mean, x, 0.0)
    sigma = torch.sqrt(per_channel(m.running_var, x, 1.0) + m.eps)
    r = torch.clamp(sigma_b / sigma, 1 / r_max, r_max).detach()  # stop_gradient in the paper
    d = torch.clamp((mu_b - mu) / sigma, -d_max, d_max).detach()
    return affine((x - mu_b) / sigma_b * r + d, m)


def rmsnorm(x: Tensor, m: nn.Module, training: bool) -> Tensor:
    """Zhang & Sennrich 2019, eq. 4: a_i / RMS(a) * g_i, RMS over the normalized dimensions."""
    rms = torch.sqrt((x**2).mean(dim=tuple(range(1, x.dim())), keepdim=True) + m.eps)
    return affine(x / rms, m)


def frn(x: Tensor, m: nn.Module, training: bool) -> Tensor:
    """Singh & Krishnan 2020, eqs. 1-3: nu^2 = mean of x^2 over positions; TLU max(y, tau)."""
    nu2 = (x**2).mean(dim=tuple(spatial(x)), keepdim=True)
    eps = m.eps + (per_channel(m.eps_l, x, 0.0).abs() if m.eps_l is not None else 0.0)
    return torch.maximum(affine(x / torch.sqrt(nu2 + eps), m), per_channel(m.tau, x, 0.0))


def evonorm_b0(x: Tensor, m: nn.Module, training: bool) -> Tensor:
    """Liu et al. 2020, Table 1: x / max(sqrt(s^2_{b,w,h}(x) + eps), v1 x + sqrt(s^2_{w,h}(x) + eps))."""
    if training:
        mu = x.mean(dim=[0, *spatial(x)], keepdim=True)
        batch_var = ((x - mu) ** 2).mean(dim=[0, *spatial(x)], keepdim=True)
    else:
        batch_var = per_channel(m.running_var, x, 1.0)
    mu_i = x.mean(dim=spatial(x), keepdim=True)
    instance_var = ((x - mu_i) ** 2).mean(dim=spatial(x), keepdim=True)
    den = torch.maximum(
        torch.sqrt(batch_var + m.eps), per_channel(m.v, x, 1.0) * x + torch.sqrt(instance_var + m.eps)
    )
    return affine(x / den, m)


def evonorm_s0(x: Tensor, m: nn.Module, training: bool) -> Tensor:
    """Liu et al. 2020, Table 1: x * sigmoid(v1 x) / sqrt(s^2_{w,h,c/g}(x) + eps)."""
    n = x.shape[0]
    grouped = x.reshape(n, m.num_groups, -1)
    mu = grouped.mean(dim=2, keepdim=True)
    std = torch.sqrt(((grouped - mu) ** 2).mean(dim=2, keepdim=True) + m.eps)
    std = (grouped * 0 + std).reshape(x.shape)
    return affine(x * torch.sigmoid(per_channel(m.v, x, 1.0) * x) / std, m)


def frozen_batchnorm(x: Tensor, m: nn.Module, training: bool) -> Tensor:
    return batchnorm(x, m, False)  # the eval-mode transform in every mode


def switchnorm(x: Tensor, m: nn.Module, training: bool) -> Tensor:
    """Luo et al. 2018, eqs. 3-5: softmax-weighted IN, LN and BN moments (BN from running stats in eval)."""
    s = spatial(x)
    mu_in = x.mean(dim=s, keepdim=True)
    var_in = ((x - mu_in) ** 2).mean(dim=s, keepdim=True)
    mu_ln = x.mean(dim=[1, *s], keepdim=True)
    var_ln = ((x - mu_ln) ** 2).mean(dim=[1, *s], keepdim=True)
    if training:
        mu_bn = x.mean(dim=[0, *s], keepdim=True)
        var_bn = ((x - mu_bn) ** 2).mean(dim=[0, *s], keepdim=True)
    else:
        mu_bn, var_bn = per_channel(m.running_mean, x, 0.0), per_channel(m.running_var, x, 1.0)
    wm = torch.exp(m.mean_logits) / torch.exp(m.mean_logits).sum()
    wv = torch.exp(m.var_logits) / torch.exp(m.var_logits).sum()
    mean = wm[0] * mu_in + wm[1] * mu_ln + wm[2] * mu_bn
    var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
    return affine((x - mean) / torch.sqrt(var + m.eps), m)


def layernorm(x: Tensor, m: nn.Module, training: bool) -> Tensor:
    return affine(standardize(x, [1, *spatial(x)], m.eps), m)


def instancenorm(x: Tensor, m: nn.Module, training: bool) -> Tensor:
    return affine(standardize(x, spatial(x), m.eps), m)


def groupnorm(x: Tensor, m: nn.Module, training: bool) -> Tensor:
    n, c = x.shape[:2]
    g = m.num_groups
    grouped = x.reshape(n, g, c // g, *x.shape[2:])
    return affine(standardize(grouped, list(range(2, grouped.dim())), m.eps).reshape(x.shape), m)


def identity(x: Tensor, m: nn.Module, training: bool) -> Tensor:
    return x


REFERENCES: dict[str, Callable[[Tensor, nn.Module, bool], Tensor]] = {
    "batchnorm": batchnorm,
    "batchrenorm": batchrenorm,
    "evonorm_b0": evonorm_b0,
    "evonorm_s0": evonorm_s0,
    "frn": frn,
    "frozen_batchnorm": frozen_batchnorm,
    "rmsnorm": rmsnorm,
    "switchnorm": switchnorm,
    "sync_batchnorm": batchnorm,  # one process: BatchNorm (the 2-process check is test_sync_batchnorm.py)
    "ghost_batchnorm": ghostbatchnorm,
    "layernorm": layernorm,
    "instancenorm": instancenorm,
    "groupnorm": groupnorm,
    "identity": identity,
    "ws_groupnorm": groupnorm,  # the module is GroupNorm; the standardization acts on the layer before
}


def reference_running_stats(
    batches: Sequence[Tensor], momentum: float | None, num_channels: int
) -> tuple[Tensor, Tensor]:
    """Running mean and unbiased running variance after training steps on ``batches``."""
    mean = torch.zeros(num_channels, dtype=torch.float64)
    var = torch.ones(num_channels, dtype=torch.float64)
    for k, x in enumerate(batches, start=1):
        flat = x.transpose(0, 1).reshape(num_channels, -1)
        n = flat.shape[1]
        bmean = flat.sum(1) / n
        bvar = ((flat - bmean[:, None]) ** 2).sum(1) / (n - 1)
        rate = 1.0 / k if momentum is None else momentum
        mean = (1 - rate) * mean + rate * bmean
        var = (1 - rate) * var + rate * bvar
    return mean, var
