"""Statistics and fused kernels shared by the built-in plugins.

Group views and their moments, the pull-back of per-group coefficients, and :class:`GroupAffine`.
On CPU an eager composition of torch ops pays for every fresh activation-sized tensor in page faults;
the fused Functions here and in the plugins allocate one such tensor per direction and keep their
temporaries cache-sized by working in blocks. Small inputs take the plugins' composite formulas under
autograd instead (:func:`use_fused`). Everything here is exercised both ways by tests/test_kernels.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# Elements per block of the blocked loops below: their temporaries then stay in cache and are recycled
# by the allocator, where each activation-sized temporary costs fresh pages (page faults) on CPU.
BLOCK = 1 << 17
# Below this many elements the plugins run their composite formula under autograd instead of their
# fused Function: on small activations the Python in a hand-written backward costs more than it saves.
FUSED_MIN_ELEMENTS = 1 << 17


# On CUDA the plugins' elementwise formulas run through torch.compile (one generated kernel per
# direction instead of one launch and one memory pass per op); False runs them eagerly.
COMPILE_ON_GPU = True

F = TypeVar("F", bound=Callable[..., Tensor])


def vmapped(x: Tensor) -> bool:
    """Whether ``x`` is a member's view inside ``torch.func.vmap`` (population training): the fused
    Functions and torch.compile do not run there; the composite formulas do."""
    return torch._C._functorch.is_batchedtensor(x)


def use_fused(x: Tensor) -> bool:
    """Whether to run the fused Functions (which compute the same numbers): CPU inputs large enough
    for their page-fault savings to pay, outside vmap. Elsewhere the composite formulas run."""
    return x.device.type == "cpu" and x.numel() >= FUSED_MIN_ELEMENTS and not vmapped(x)


def compiled_on_gpu(fn: F) -> F:
    """``fn`` (a pure function of tensors and constants) compiled with ``torch.compile`` when its
    first argument is on a CUDA device, eager elsewhere. Shapes become dynamic after the first new
    shape, so a model's few layer shapes and its evaluation batch compile a handful of times, not
    once per step."""
    compiled: list[Callable[..., Tensor]] = []

    @functools.wraps(fn)
    def call(x: Tensor, *args):
        if x.device.type != "cuda" or not COMPILE_ON_GPU or torch.compiler.is_compiling() or vmapped(x):
            return fn(x, *args)
        if not compiled:
            compiled.append(torch.compile(fn, fullgraph=True))
        return compiled[0](x, *args)

    return call  # type: ignore[return-value]


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
    """Mean and biased variance of each group of a :func:`group_view`, as (K, G) tensors.

    Two centred passes, so as accurate as Welford (``torch.var_mean`` is about 25x slower on CPU), the
    second blocked. Differentiable; the fused Functions below call it without autograd and carry the
    gradient themselves (:func:`add_moment_grads`).
    """
    if xv.device.type != "cpu":  # one native Welford kernel, in float32 at least (as under autocast)
        var, mean = torch.var_mean(
            xv.to(torch.promote_types(xv.dtype, torch.float32)), dim=(1, 3), correction=0
        )
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


def pull_back(
    fn: Callable[..., tuple[Tensor, ...]], inputs: Sequence[Tensor | None], grads: Sequence[Tensor]
) -> tuple[list[Tensor], list[Tensor | None]]:
    """``fn(*inputs)`` (detached) and the gradients of ``Σ_k Σ <fn(*inputs)[k], grads[k]>`` with respect
    to ``inputs`` (None for a None or unused input).

    ``fn`` maps per-group statistics to per-group coefficients, small next to the activations; this is
    how the Functions here stay correct for any coefficient formula without hand-derived chains.
    """
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_() for t in inputs]
        outputs = fn(*leaves)
    # an output broadcast against its gradient (a per-channel (1, C) term) takes the summed gradient
    used = [(o, g.sum_to_size(o.shape)) for o, g in zip(outputs, grads, strict=True) if o.requires_grad]
    wrt = [t for t in leaves if t is not None]
    found = iter(
        torch.autograd.grad([o for o, _ in used], wrt, [g for _, g in used], allow_unused=True)
        if used
        else [None] * len(wrt)
    )
    return [o.detach() for o in outputs], [None if t is None else next(found) for t in leaves]


def add_moment_grads(
    gv: Tensor, xv: Tensor, mean: Tensor, g_mean: Tensor | None, g_var: Tensor | None
) -> None:
    """Add to ``gv`` (in place) the gradient reaching the :func:`group_view` ``xv`` through its group
    moments: ∂mean/∂x = 1/S and ∂var/∂x = 2 (x − mean)/S (S elements per group). ``x − mean`` is formed
    block by block rather than expanded as ``x·k − mean·k``, which cancels when k is large."""
    size = xv.shape[1] * xv.shape[3]
    if g_var is not None:
        k = (2 / size * g_var)[:, None, :, None]
        for g_b, x_b, m_b, k_b in blocks(gv, xv, mean[:, None, :, None], k):
            g_b.addcmul_(x_b - m_b, k_b)
    if g_mean is not None:
        gv.add_((g_mean / size)[:, None, :, None])


class GroupAffine(torch.autograd.Function):
    """``y = x · scale_kg + shift_kg`` on a :func:`group_view` ``x``, where ``(scale, shift) =
    coefficients(mean, var, *params)`` is any differentiable function of the group moments (K, G) and
    of ``params``, broadcastable to (K, G).

    The BatchNorm family whose statistics pool group moments (ghost batches; switchable mixtures of
    IN/LN/BN from instance moments) has this form. Forward: the moments in two passes, y in one.
    Backward: ∂L/∂scale = Σ g x and ∂L/∂shift = Σ g (per group) are pulled back through
    ``coefficients`` (re-run on the small tensors) to the moments and parameters, then
    ∂L/∂x = g · scale + ∂L/∂mean / S + 2 ∂L/∂var (x − mean) / S, in a single fresh tensor: on CPU every
    fresh activation-sized tensor costs page faults, which dominated the unfused version.

    ``apply(x, coefficients, *params)`` returns ``(y, mean, var)``; the (K, G) moments carry no
    gradient (they are for running statistics). Once differentiable.
    """

    @staticmethod
    def forward(ctx, xv: Tensor, coefficients: Callable[..., tuple[Tensor, Tensor]], *params: Tensor | None):
        mean, var = group_moments(xv)
        scale, shift = (t.expand_as(mean)[:, None, :, None] for t in coefficients(mean, var, *params))
        y = torch.mul(xv, scale).add_(shift)
        ctx.save_for_backward(xv, mean, var, *params)
        ctx.coefficients = coefficients
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor, *_: Tensor):
        xv, mean, var, *params = ctx.saved_tensors

        def expanded(*args: Tensor | None) -> tuple[Tensor, ...]:
            return tuple(t.expand_as(mean) for t in ctx.coefficients(*args))

        g_coef = (group_dot(g, xv), group_sum(g))  # ∂L/∂scale, ∂L/∂shift
        (scale, _), (g_mean, g_var, *g_params) = pull_back(expanded, [mean, var, *params], g_coef)
        gx = None
        if ctx.needs_input_grad[0]:
            gx = torch.mul(g, scale[:, None, :, None])
            add_moment_grads(gx, xv, mean, g_mean, g_var)
        return gx, None, *g_params
