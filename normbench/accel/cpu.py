"""The ``fused`` family's shared parts: CPU ``torch.autograd.Function`` s with hand-derived backwards.

On CPU an eager composition of torch ops pays for every fresh activation-sized tensor in page faults;
the fused Functions here and in the per-plugin modules allocate one such tensor per direction and keep
their temporaries cache-sized by working in blocks (:func:`normbench.norms._stats.blocks`). Small inputs
take the plugins' formulas under autograd instead (:func:`use_fused`): there the Python in a
hand-written backward costs more than it saves. tests/test_kernels.py runs every one over many blocks
against its plugin's formula.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from normbench.norms._stats import blocks, group_dot, group_moments, group_sum, group_view, vmapped

# Below this many elements the plugins run their formula under autograd instead of a fused Function.
FUSED_MIN_ELEMENTS = 1 << 17


def use_fused(module: object, x: Tensor) -> bool:
    """Where a fused Function pays: non-empty CPU inputs of at least :data:`FUSED_MIN_ELEMENTS`, outside
    vmap (the ``applies`` of every ``fused`` kernel; ``module`` is the plugin that asks)."""
    return x.device.type == "cpu" and x.numel() >= max(FUSED_MIN_ELEMENTS, 1) and not vmapped(x)


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


def group_affine_fused(
    x: Tensor, coefficients: Callable[..., tuple[Tensor, Tensor]], *params: Tensor | None, samples: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`normbench.norms._stats.group_affine` through :class:`GroupAffine`: the same ``(y, mean,
    var)``."""
    y, mean, var = GroupAffine.apply(group_view(x, samples), coefficients, *params)
    return y.view(x.shape), mean, var
