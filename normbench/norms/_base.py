"""Shared pieces of the built-in plugins: the (N, C, *spatial) input check, per-channel affine
parameters, and the moment statistics with their hand-written gradients."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

MAX_SPATIAL_DIMS = 3


def moments(x: Tensor, dims: tuple[int, ...] | list[int]) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over ``dims`` (kept), differentiable, in two passes.

    Two plain reductions instead of ``torch.var_mean``, whose single-pass kernel is about 30× slower
    on CPU for activation-sized tensors; the centred second pass keeps it as accurate.
    """
    mean = x.mean(dim=tuple(dims), keepdim=True)
    return mean, (x - mean).square().mean(dim=tuple(dims), keepdim=True)


# Elements per block of the blocked loops below: their temporaries then stay in cache and are recycled
# by the allocator, where each activation-sized temporary costs fresh pages (page faults) on CPU.
BLOCK = 1 << 17


def row_blocks(*tensors: Tensor) -> zip:
    """Matching blocks of rows of (R, S) or (R, 1) tensors, about BLOCK elements each."""
    rows = max(1, BLOCK // max(t.shape[1] for t in tensors))
    return zip(*(t.split(rows) for t in tensors), strict=True)


def as_rows(x: Tensor, *per_channel: Tensor) -> list[Tensor]:
    """``x`` (N, C, *) as (N·C, S) rows, then each (C,), (1, C) or (N, C) coefficient as an (N·C, 1) column."""
    n, c = x.shape[:2]
    return [x.reshape(n * c, -1), *(t.expand(n, c).reshape(n * c, 1) for t in per_channel)]


def row_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_s a_rs b_rs for (R, S) tensors, as (R,), without an (R, S) temporary."""
    return torch.cat([torch.linalg.vecdot(p, q) for p, q in row_blocks(a, b)])


def instance_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance per sample and channel over the positions, as (N, C) tensors (two
    passes, centred, so as accurate as Welford; no autograd: the Functions below carry the gradient)."""
    n, c = x.shape[:2]
    rows = x.reshape(n * c, -1)
    mean = rows.mean(1)
    sq = torch.cat([torch.linalg.vector_norm(r - m, dim=1) for r, m in row_blocks(rows, mean[:, None])])
    return mean.view(n, c), sq.square_().div_(rows.shape[1]).view(n, c)


def pooled(mean: Tensor, var: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over ``dim`` (kept) of equal-sized groups with these moments: the law
    of total variance, written as a sum of squares so that it cannot cancel."""
    pooled_mean = mean.mean(dim, keepdim=True)
    return pooled_mean, var.mean(dim, keepdim=True) + (mean - pooled_mean).square().mean(dim, keepdim=True)


def pull_back(
    fn: Callable[..., tuple[Tensor, ...]], inputs: Sequence[Tensor | None], grads: Sequence[Tensor]
) -> tuple[list[Tensor], list[Tensor | None]]:
    """``fn(*inputs)`` (detached) and the gradients of ``Σ_k Σ <fn(*inputs)[k], grads[k]>`` with respect
    to ``inputs`` (None for a None or unused input), by running ``fn`` under autograd on detached copies.

    ``fn`` maps (N, C)-sized statistics to (N, C)-sized coefficients, so re-running it is cheap; this
    is how the Functions here stay correct for any coefficient formula without hand-derived chains.
    """
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_() for t in inputs]
        outputs = fn(*leaves)
        # an output broadcast against its gradient (a per-channel (1, C) term) takes the summed gradient
        used = [(o, gr.sum_to_size(o.shape)) for o, gr in zip(outputs, grads, strict=True) if o.requires_grad]
        wrt = [t for t in leaves if t is not None]
        found = iter(
            torch.autograd.grad([o for o, _ in used], wrt, [gr for _, gr in used], allow_unused=True)
            if used
            else [None] * len(wrt)
        )
    return [o.detach() for o in outputs], [None if t is None else next(found) for t in leaves]


def moment_grad_terms(
    x: Tensor, mean: Tensor, g_mean: Tensor | None, g_var: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(K, J), shaped to broadcast against ``x``, such that ``x · K + J`` is the gradient reaching ``x``
    through its instance moments: ∂mean_nc/∂x = 1/S, ∂var_nc/∂x = 2 (x − mean_nc)/S (S positions)."""
    n, c = x.shape[:2]
    size = x[0, 0].numel()
    view = (n, c, *[1] * (x.dim() - 2))
    k = torch.zeros_like(mean) if g_var is None else 2 * g_var / size
    j = -k * mean if g_mean is None else g_mean / size - k * mean
    return k.view(view), j.view(view)


class InstanceAffine(torch.autograd.Function):
    """``y = x · scale_nc + shift_nc`` where ``(scale, shift) = coefficients(mean, var, *params)`` is
    any differentiable function of the instance moments (per sample n and channel c, over the
    positions) and of ``params``, broadcastable to (N, C).

    BatchNorm-family layers whose statistics pool instance moments (ghost batches, switchable
    mixtures of IN/LN/BN) have this form. Forward: the moments in two passes, y in one. Backward:
    ∂L/∂scale = Σ_s g x and ∂L/∂shift = Σ_s g are pulled back through ``coefficients`` (re-run on the
    (N, C) tensors) to the moments and parameters, then
    ∂L/∂x = g · scale + ∂L/∂mean / S + 2 ∂L/∂var (x − mean) / S, in a single fresh tensor: on CPU every
    fresh activation-sized tensor costs page faults, which dominated the unfused version.

    ``apply(x, coefficients, *params)`` returns ``(y, mean, var)``; the (N, C) moments carry no
    gradient (they are for running statistics). Once differentiable.
    """

    @staticmethod
    def forward(ctx, x: Tensor, coefficients: Callable[..., tuple[Tensor, Tensor]], *params: Tensor | None):
        n, c = x.shape[:2]
        mean, var = instance_moments(x)
        scale, shift = (t.expand(n, c) for t in coefficients(mean, var, *params))
        view = (n, c, *[1] * (x.dim() - 2))
        y = torch.mul(x, scale.reshape(view)).add_(shift.reshape(view))
        ctx.save_for_backward(x, mean, var, *params)
        ctx.coefficients = coefficients
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor, *_: Tensor):
        x, mean, var, *params = ctx.saved_tensors
        n, c = x.shape[:2]
        g_f, x_f = g.reshape(n, c, -1), x.reshape(n, c, -1)

        def expanded(*args: Tensor | None) -> tuple[Tensor, ...]:
            return tuple(t.expand(n, c) for t in ctx.coefficients(*args))

        g_coef = (
            row_dot(g_f.reshape(n * c, -1), x_f.reshape(n * c, -1)).view(n, c),
            g_f.sum(2),
        )  # ∂L/∂scale, ∂L/∂shift
        (scale, _), (g_mean, g_var, *g_params) = pull_back(expanded, [mean, var, *params], g_coef)
        gx = None
        if ctx.needs_input_grad[0]:
            k, j = moment_grad_terms(x, mean, g_mean, g_var)
            gx = torch.mul(g, scale.reshape(k.shape)).addcmul_(x, k).add_(j)
        return gx, None, *g_params


class ChannelNorm(nn.Module):
    """Base of the built-in norms: ``num_channels``, ``eps``, optional per-channel ``weight``/``bias``.

    Subclasses call :meth:`check_input` first in ``forward``. Parameter names match torch's so state
    dicts interoperate.
    """

    min_spatial_positions = 0

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"{type(self).__name__}: eps must be > 0, got {eps!r}")
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError unless ``x`` is (N, C, *spatial) with this C and 0-3 spatial dims."""
        if not 2 <= x.dim() <= 2 + MAX_SPATIAL_DIMS or x.shape[1] != self.num_channels:
            raise ValueError(
                f"{type(self).__name__}: expected input of shape (N, {self.num_channels}, *spatial) "
                f"with 0 to {MAX_SPATIAL_DIMS} spatial dims, got {tuple(x.shape)}"
            )
        if self.min_spatial_positions and math.prod(x.shape[2:]) < self.min_spatial_positions:
            raise ValueError(
                f"{type(self).__name__}: needs at least {self.min_spatial_positions} spatial positions "
                f"per channel to compute its statistics, got input of shape {tuple(x.shape)}; "
                "(N, C) features have none"
            )

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}"
