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
    if training or m.running_mean is None:
        return affine(standardize(x, [0, *spatial(x)], m.eps), m)
    mean = per_channel(m.running_mean, x, 0.0)
    var = per_channel(m.running_var, x, 1.0)
    return affine((x - mean) / torch.sqrt(var + m.eps), m)


def ghostbatchnorm(x: Tensor, m: nn.Module, training: bool) -> Tensor:
    if not training:
        return batchnorm(x, m, False)
    g = m.ghost_batch_size
    parts = [affine(standardize(x[i : i + g], [0, *spatial(x)], m.eps), m) for i in range(0, len(x), g)]
    return torch.cat(parts)


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
    "ghost_batchnorm": ghostbatchnorm,
    "layernorm": layernorm,
    "instancenorm": instancenorm,
    "groupnorm": groupnorm,
    "identity": identity,
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
