"""Statistics shared by the built-in plugins' formulas: group views and their moments (two centred passes,
the second blocked so its temporaries stay cache-sized on CPU), pooled moments and the standardizing
coefficients. The accelerated forms (:mod:`normbench.accel`) build on the same helpers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# Elements per block of the blocked loops below: their temporaries then stay in cache and are recycled
# by the allocator, where each activation-sized temporary costs fresh pages (page faults) on CPU.
BLOCK = 1 << 17


def vmapped(x: Tensor) -> bool:
    """Whether ``x`` is a member's view inside ``torch.func.vmap`` (population training): the fused
    Functions and torch.compile do not run there; the composite formulas do."""
    return torch._C._functorch.is_batchedtensor(x)


def at_least_float32(x: Tensor) -> torch.dtype:
    """The dtype statistics of ``x`` are kept in: float32 for half-precision inputs (as torch's norms and
    autocast keep them; a float16 square overflows past 256), else ``x``'s own."""
    return torch.promote_types(x.dtype, torch.float32)


def group_view(x: Tensor, samples: int = 1, channels: int = 1) -> Tensor:
    """``x`` (N, C, *) as a (K, M, G, P) tensor whose statistics groups are its (k, g) slices: ``samples``
    consecutive samples (M) × ``channels`` consecutive channels and every position (P).

    ``(1, 1)`` gives InstanceNorm's groups, ``(g, 1)`` ghost batches of g samples, ``(1, C // G)``
    GroupNorm's G groups. A view when ``x`` is contiguous.
    """
    n, c = x.shape[:2]
    return x.reshape(n // samples, samples, c // channels, -1)


def blocks(*tensors: Tensor) -> zip:
    """Matching blocks along dim 0 of tensors of equal length, about BLOCK elements of the first each."""
    size = max(1, BLOCK // max(1, tensors[0][0].numel()))
    return zip(*(t.split(size) for t in tensors), strict=True)


def group_moments(xv: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of each group of a :func:`group_view`, as (K, G) tensors, in float32 for
    half-precision inputs.

    Two centred passes, so as accurate as Welford (``torch.var_mean`` is about 25x slower on CPU), the
    second blocked. Differentiable; the fused Functions below call it without autograd and carry the
    gradient themselves (:func:`add_moment_grads`).
    """
    xv = xv.to(at_least_float32(xv))  # half-precision moments of activations past 256 were inf
    if xv.device.type != "cpu":  # one native Welford kernel
        var, mean = torch.var_mean(xv, dim=(1, 3), correction=0)
        return mean, var
    count = xv.shape[1] * xv.shape[3]
    mean = group_sum(xv) / count
    squares = [group_sum((b - m[:, None, :, None]).square_()) for b, m in blocks(xv, mean)]
    return mean, (torch.cat(squares) if len(squares) > 1 else squares[0]).div_(count)


def group_sum(t: Tensor) -> Tensor:
    """Σ over each group of a :func:`group_view` tensor, as (K, G); a view of ``t`` for one-element
    groups. Dims of size 1 are left out of the reduction: reducing over them is a slow path on CPU, and
    (N, C) features have them."""
    dims = [d for d in (1, 3) if t.shape[d] > 1]
    return (t.sum(dims, keepdim=True) if dims else t)[:, 0, :, 0]


def group_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ a·b over each group of two :func:`group_view` tensors, as (K, G), without a full-size temporary."""
    parts = [group_sum(p * q) for p, q in blocks(a, b)]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def position_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ a·b over the last dim (positions); a plain product where there is one position."""
    return (a * b)[..., 0] if a.shape[-1] == 1 else torch.linalg.vecdot(a, b)


def pooled(mean: Tensor, var: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over ``dim`` (kept) of equal-sized groups with these moments: the law
    of total variance, written as a sum of squares so that it cannot cancel."""
    pooled_mean = mean.mean(dim, keepdim=True)
    return pooled_mean, var.mean(dim, keepdim=True) + (mean - pooled_mean).square().mean(dim, keepdim=True)


def standardizing(
    mean: Tensor, var: Tensor, eps: float, weight: Tensor | None, bias: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(scale, shift) such that ``x · scale + shift = (x − mean) / sqrt(var + eps) · weight + bias``."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    return scale, shift if bias is None else shift + bias


def group_affine(
    x: Tensor,
    coefficients: Callable[..., tuple[Tensor, Tensor]],
    *params: Tensor | None,
    samples: int = 1,
    channels: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """``y = x · scale + shift`` with ``(scale, shift) = coefficients(mean, var, *params)`` of the
    moments of each :func:`group_view` group (``samples`` × ``channels``), under autograd:
    ``(y, mean, var)``, ``y`` shaped as ``x``, the (K, G) moments without gradient (for running
    statistics). The BatchNorm family whose statistics pool group moments (ghost batches, SwitchNorm's
    mixture) has this form; :class:`normbench.accel.cpu.GroupAffine` computes it fused."""
    xv = group_view(x, samples, channels)
    mean, var = group_moments(xv)
    scale, shift = (t.expand_as(mean)[:, None, :, None] for t in coefficients(mean, var, *params))
    return (xv * scale + shift).view(x.shape), mean.detach(), var.detach()


def last_group(n: int, samples: int) -> int:
    """The first sample of the last of the groups of ``samples`` consecutive samples that a batch of ``n``
    is cut into: a remainder of several samples forms a smaller last group, a remainder of one joins the
    group before it (one sample has no batch statistics), and ``samples >= n`` makes one group."""
    rest = n % samples
    if rest == 0:
        return max(n - samples, 0)
    return max(n - rest - (samples if rest == 1 else 0), 0)
