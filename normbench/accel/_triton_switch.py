"""SwitchNorm's Triton kernels (its path on CUDA, :class:`normbench.accel.switchnorm.SwitchNormFused`).

Each (n, c) plane p of a contiguous (N, C, *spatial) input, with instance moments μᵢₙ, σ²ᵢₙ
(:func:`normbench.accel._triton.plane_moments`), is normalized with the mixture

    μ_p = w₀ μᵢₙ + w₁ μₗₙ(n) + w₂ μ_bn(c),   σ²_p = w'₀ σ²ᵢₙ + w'₁ σ²ₗₙ(n) + w'₂ σ²_bn(c),
    y = (x − μ_p) r_p γ_c + β_c,   r_p = (σ²_p + eps)^(-1/2),   w = softmax(λ), w' = softmax(λ'),

where the layer statistics pool the C planes of sample n and the batch statistics the N planes of
channel c (the running statistics in eval). Forward: the planes' moments, the row and column pools
(:func:`switch_pools`, which also moves the running statistics), and y (:func:`switch_map`), each
program forming its plane's coefficients. Backward (:func:`switch_backward`), with A_p = Σ g and
D_p = Σ g (x − μ_p) over the plane:

    ∂L/∂μ_p = −γ r A_p,   ∂L/∂σ²_p = −½ γ r³ D_p,   ∂L/∂γ_c = Σ_n r D_p,   ∂L/∂β_c = Σ_n A_p,
    ∂L/∂σ²ᵢₙ = w'₀ ∂L/∂σ²_p + w'₁ Σ_row ∂L/∂σ²/C + w'₂ Σ_col ∂L/∂σ²/N,
    ∂L/∂μᵢₙ = w₀ ∂L/∂μ_p + w₁ Σ_row ∂L/∂μ/C + w₂ Σ_col ∂L/∂μ/N
              + 2 w'₁ Σ_row ∂L/∂σ² (μᵢₙ − μₗₙ)/C + 2 w'₂ Σ_col ∂L/∂σ² (μᵢₙ − μ_bn)/N,
    ∂L/∂x = g r γ + ∂L/∂μᵢₙ / S + 2 ∂L/∂σ²ᵢₙ (x − μᵢₙ) / S,
    ∂L/∂λ_j = w_j (G_j − Σ_k w_k G_k),   G = (Σ_p ∂L/∂μ_p μᵢₙ, Σ_n μₗₙ Σ_row ∂L/∂μ, Σ_c μ_bn Σ_col ∂L/∂μ)

(λ' alike with the variances); in eval the batch terms do not reach x. Three launches per direction
and no small-tensor op in between. Tests run them through Triton's interpreter against the torch
formula (tests/test_planes.py).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

# _triton._launch is looked up per call: one attribute to stub or record every launch
from normbench.accel import _triton
from normbench.accel._triton import (
    AVAILABLE,
    _acc,
    _block,
    _grid,
    _pointers,
    _positions,
    split_float,
    written_in_place,
)

if AVAILABLE:
    import triton.language as tl
    from triton import jit

    from normbench.accel._triton import _channel_param, _move_towards, _wide

    @jit
    def _softmax3(ptr, ACC: tl.constexpr):
        a, b, c = tl.load(ptr).to(ACC), tl.load(ptr + 1).to(ACC), tl.load(ptr + 2).to(ACC)
        top = tl.maximum(tl.maximum(a, b), c)
        a, b, c = tl.exp(a - top), tl.exp(b - top), tl.exp(c - top)
        total = a + b + c
        return a / total, b / total, c / total

    @jit
    def _pool(mean_ptr, var_ptr, start, stride, count, BLOCK: tl.constexpr, ACC: tl.constexpr):
        """Mean and biased variance of ``count`` planes (``start + k · stride``) from their moments, as a
        sum of squares (law of total variance)."""
        offs = tl.arange(0, BLOCK)
        total = tl.zeros([BLOCK], ACC)
        for k in range(0, count, BLOCK):
            total += tl.load(mean_ptr + start + (k + offs) * stride, mask=k + offs < count, other=0.0).to(ACC)
        mu = tl.sum(total, 0) / count
        second = tl.zeros([BLOCK], ACC)
        for k in range(0, count, BLOCK):
            inside = k + offs < count
            d = tl.where(
                inside, tl.load(mean_ptr + start + (k + offs) * stride, mask=inside).to(ACC) - mu, 0.0
            )
            second += tl.load(var_ptr + start + (k + offs) * stride, mask=inside, other=0.0).to(ACC) + d * d
        return mu, tl.sum(second, 0) / count

    @jit
    def _pools_kernel(
        mean_ptr, var_ptr, rows_ptr, cols_ptr, rm_ptr, rv_ptr, momentum, momentum_lo, unbias, unbias_lo, N, C,
        TRAINING: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
    ):  # fmt: skip
        """Program i < N: sample i's layer statistics into rows (2, N); program N + c: channel c's batch
        statistics into cols (2, C), moving the running ones towards them (variance × unbias), or in
        eval the running statistics."""
        i = tl.program_id(0)
        if i < N:
            mu, var = _pool(mean_ptr, var_ptr, i * C, 1, C, BLOCK, ACC)
            tl.store(rows_ptr + i, mu)
            tl.store(rows_ptr + N + i, var)
        else:
            c = i - N
            if TRAINING:
                mu, var = _pool(mean_ptr, var_ptr, c, C, N, BLOCK, ACC)
                rate = _wide(momentum, momentum_lo, ACC)
                _move_towards(rm_ptr, c, mu, rate, ACC)
                _move_towards(rv_ptr, c, var * _wide(unbias, unbias_lo, ACC), rate, ACC)
            else:
                mu, var = tl.load(rm_ptr + c).to(ACC), tl.load(rv_ptr + c).to(ACC)
            tl.store(cols_ptr + c, mu)
            tl.store(cols_ptr + C + c, var)

    @jit
    def _plane(
        p, mean_ptr, var_ptr, rows_ptr, cols_ptr, w_ptr, b_ptr, lm_ptr, lv_ptr, eps, N, C,
        HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACC: tl.constexpr,
    ):  # fmt: skip
        """Plane p's mixture mean μ_p, r_p = (σ²_p + eps)^(-1/2), γ_c and β_c."""
        n, c = p // C, p % C
        wm0, wm1, wm2 = _softmax3(lm_ptr, ACC)
        wv0, wv1, wv2 = _softmax3(lv_ptr, ACC)
        mu = (
            wm0 * tl.load(mean_ptr + p).to(ACC)
            + wm1 * tl.load(rows_ptr + n).to(ACC)
            + wm2 * tl.load(cols_ptr + c).to(ACC)
        )
        var = (
            wv0 * tl.load(var_ptr + p).to(ACC)
            + wv1 * tl.load(rows_ptr + N + n).to(ACC)
            + wv2 * tl.load(cols_ptr + C + c).to(ACC)
        )
        w = _channel_param(w_ptr, c, 1.0, HAS_W, ACC)
        return mu, 1.0 / tl.sqrt(var + eps), w, _channel_param(b_ptr, c, 0.0, HAS_B, ACC)

    @jit
    def _map_kernel(
        x_ptr, y_ptr, mean_ptr, var_ptr, rows_ptr, cols_ptr, w_ptr, b_ptr, lm_ptr, lv_ptr, eps, S, N, C,
        HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
    ):  # fmt: skip
        p = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < S
        mu, r, w, b = _plane(
            p, mean_ptr, var_ptr, rows_ptr, cols_ptr, w_ptr, b_ptr, lm_ptr, lv_ptr, eps, N, C, HAS_W, HAS_B, ACC
        )  # fmt: skip
        base = p.to(tl.int64) * S
        x = tl.load(x_ptr + base + offs, mask=inside, other=0.0).to(ACC)
        tl.store(y_ptr + base + offs, ((x - mu) * (r * w) + b).to(y_ptr.dtype.element_ty), mask=inside)

    @jit
    def _sums_kernel(
        g_ptr, x_ptr, terms_ptr, mean_ptr, var_ptr, rows_ptr, cols_ptr, w_ptr, b_ptr, lm_ptr, lv_ptr, eps,
        S, N, C, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
    ):  # fmt: skip
        """Per plane, into terms (4, N, C): ∂L/∂μ_p, ∂L/∂σ²_p, r D_p and A_p."""
        p = tl.program_id(0)
        P = N * C
        mu, r, w, _b = _plane(
            p, mean_ptr, var_ptr, rows_ptr, cols_ptr, w_ptr, b_ptr, lm_ptr, lv_ptr, eps, N, C, HAS_W, HAS_B, ACC
        )  # fmt: skip
        base = p.to(tl.int64) * S
        offs = tl.arange(0, BLOCK)
        gs = tl.zeros([BLOCK], ACC)
        gd = tl.zeros([BLOCK], ACC)
        for start in range(0, S, BLOCK):
            inside = start + offs < S
            g = tl.load(g_ptr + base + start + offs, mask=inside, other=0.0).to(ACC)
            x = tl.load(x_ptr + base + start + offs, mask=inside, other=0.0).to(ACC)
            gs += g
            gd += g * (x - mu)
        a, d = tl.sum(gs, 0), tl.sum(gd, 0)
        tl.store(terms_ptr + p, -w * r * a)
        tl.store(terms_ptr + P + p, -0.5 * w * r * r * r * d)
        tl.store(terms_ptr + 2 * P + p, r * d)
        tl.store(terms_ptr + 3 * P + p, a)

    @jit
    def _pools_backward_kernel(
        terms_ptr, mean_ptr, var_ptr, row_out_ptr, col_out_ptr, dw_ptr, db_ptr, N, C,
        HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
    ):  # fmt: skip
        """Program i < N: over sample i's planes, Σ ∂L/∂μ_p, Σ ∂L/∂σ²_p, Σ ∂L/∂μ_p μᵢₙ and Σ ∂L/∂σ²_p σ²ᵢₙ
        into row_out (4, N); program N + c: over channel c's planes, Σ ∂L/∂μ_p and Σ ∂L/∂σ²_p into col_out
        (2, C), ∂L/∂γ_c and ∂L/∂β_c into dw and db (in their dtype)."""
        i = tl.program_id(0)
        P = N * C
        row = i < N
        start = tl.where(row, i * C, i - N)
        stride = tl.where(row, 1, C)
        count = tl.where(row, C, N)
        offs = tl.arange(0, BLOCK)
        s0 = tl.zeros([BLOCK], ACC)
        s1 = tl.zeros([BLOCK], ACC)
        s2 = tl.zeros([BLOCK], ACC)
        s3 = tl.zeros([BLOCK], ACC)
        for k in range(0, count, BLOCK):
            inside = k + offs < count
            at = start + (k + offs) * stride
            gm = tl.load(terms_ptr + at, mask=inside, other=0.0).to(ACC)
            gv = tl.load(terms_ptr + P + at, mask=inside, other=0.0).to(ACC)
            s0 += gm
            s1 += gv
            if row:
                s2 += gm * tl.load(mean_ptr + at, mask=inside, other=0.0).to(ACC)
                s3 += gv * tl.load(var_ptr + at, mask=inside, other=0.0).to(ACC)
            else:
                s2 += tl.load(terms_ptr + 2 * P + at, mask=inside, other=0.0).to(ACC)
                s3 += tl.load(terms_ptr + 3 * P + at, mask=inside, other=0.0).to(ACC)
        if row:
            tl.store(row_out_ptr + i, tl.sum(s0, 0))
            tl.store(row_out_ptr + N + i, tl.sum(s1, 0))
            tl.store(row_out_ptr + 2 * N + i, tl.sum(s2, 0))
            tl.store(row_out_ptr + 3 * N + i, tl.sum(s3, 0))
        else:
            c = i - N
            tl.store(col_out_ptr + c, tl.sum(s0, 0))
            tl.store(col_out_ptr + C + c, tl.sum(s1, 0))
            if HAS_W:
                tl.store(dw_ptr + c, tl.sum(s2, 0).to(dw_ptr.dtype.element_ty))
            if HAS_B:
                tl.store(db_ptr + c, tl.sum(s3, 0).to(db_ptr.dtype.element_ty))

    @jit
    def _dot(a_ptr, b_ptr, count, BLOCK: tl.constexpr, ACC: tl.constexpr):
        """Σ a b over ``count`` elements; b_ptr None for Σ a."""
        offs = tl.arange(0, BLOCK)
        total = tl.zeros([BLOCK], ACC)
        for k in range(0, count, BLOCK):
            inside = k + offs < count
            a = tl.load(a_ptr + k + offs, mask=inside, other=0.0).to(ACC)
            if b_ptr is not None:
                a *= tl.load(b_ptr + k + offs, mask=inside, other=0.0).to(ACC)
            total += a
        return tl.sum(total, 0)

    @jit
    def _softmax3_backward(ptr, out_ptr, g0, g1, g2, ACC: tl.constexpr):
        """∂L/∂λ_j = w_j (g_j − Σ_k w_k g_k) into out_ptr[0:3] (in its dtype), w = softmax(λ at ptr)."""
        w0, w1, w2 = _softmax3(ptr, ACC)
        mean = w0 * g0 + w1 * g1 + w2 * g2
        out = out_ptr.dtype.element_ty
        tl.store(out_ptr, (w0 * (g0 - mean)).to(out))
        tl.store(out_ptr + 1, (w1 * (g1 - mean)).to(out))
        tl.store(out_ptr + 2, (w2 * (g2 - mean)).to(out))

    @jit
    def _input_grad_kernel(
        g_ptr, x_ptr, dx_ptr, terms_ptr, mean_ptr, var_ptr, rows_ptr, cols_ptr, row_out_ptr, col_out_ptr,
        w_ptr, b_ptr, lm_ptr, lv_ptr, lm_grad_ptr, lv_grad_ptr, eps, S, N, C,
        HAS_W: tl.constexpr, HAS_B: tl.constexpr, TRAINING: tl.constexpr, BLOCK: tl.constexpr,
        ACC: tl.constexpr,
    ):  # fmt: skip
        """∂L/∂x; the first program also writes ∂L/∂λ and ∂L/∂λ' (in their dtype)."""
        p = tl.program_id(0)
        P = N * C
        n, c = p // C, p % C
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < S
        _mu, r, w, _b = _plane(
            p, mean_ptr, var_ptr, rows_ptr, cols_ptr, w_ptr, b_ptr, lm_ptr, lv_ptr, eps, N, C, HAS_W, HAS_B, ACC
        )  # fmt: skip
        wm0, wm1, wm2 = _softmax3(lm_ptr, ACC)
        wv0, wv1, wv2 = _softmax3(lv_ptr, ACC)
        mean_in = tl.load(mean_ptr + p).to(ACC)
        row_gv = tl.load(row_out_ptr + N + n).to(ACC)
        g_var = wv0 * tl.load(terms_ptr + P + p).to(ACC) + wv1 * row_gv / C
        g_mean = (
            wm0 * tl.load(terms_ptr + p).to(ACC)
            + wm1 * tl.load(row_out_ptr + n).to(ACC) / C
            + 2.0 * wv1 * row_gv * (mean_in - tl.load(rows_ptr + n).to(ACC)) / C
        )
        if TRAINING:
            col_gv = tl.load(col_out_ptr + C + c).to(ACC)
            g_var += wv2 * col_gv / N
            g_mean += wm2 * tl.load(col_out_ptr + c).to(ACC) / N
            g_mean += 2.0 * wv2 * col_gv * (mean_in - tl.load(cols_ptr + c).to(ACC)) / N
        base = p.to(tl.int64) * S
        g = tl.load(g_ptr + base + offs, mask=inside, other=0.0).to(ACC)
        x = tl.load(x_ptr + base + offs, mask=inside, other=0.0).to(ACC)
        dx = g * (r * w) + g_mean / S + 2.0 * g_var * (x - mean_in) / S
        tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=inside)
        if (p == 0) & (tl.program_id(1) == 0):
            _softmax3_backward(
                lm_ptr,
                lm_grad_ptr,
                _dot(row_out_ptr + 2 * N, None, N, BLOCK, ACC),
                _dot(rows_ptr, row_out_ptr, N, BLOCK, ACC),
                _dot(cols_ptr, col_out_ptr, C, BLOCK, ACC),
                ACC,
            )
            _softmax3_backward(
                lv_ptr,
                lv_grad_ptr,
                _dot(row_out_ptr + 3 * N, None, N, BLOCK, ACC),
                _dot(rows_ptr + N, row_out_ptr + N, N, BLOCK, ACC),
                _dot(cols_ptr + C, col_out_ptr + C, C, BLOCK, ACC),
                ACC,
            )


Params = tuple[Tensor | None, Tensor | None, Tensor, Tensor]  # γ, β, λ, λ'


class SwitchPlan(NamedTuple):
    """How SwitchNorm's kernels run on an input of one shape and dtype: the elementwise kernels' grid and
    block of positions, the pooling kernels' grid and block of rows and columns, the scalar arguments (S,
    N, C), the unbiasing factor of a batch variance as a float pair, and the compile-time options with a
    weight and a bias or without."""

    grid: tuple[int, int]
    block: int
    pools_grid: tuple[int]
    pools_block: int
    sizes: tuple[int, int, int]
    unbias: tuple[float, float]
    options: dict


@functools.lru_cache(maxsize=256)
def switch_plan(shape: torch.Size, dtype: torch.dtype, has_w: bool, has_b: bool) -> SwitchPlan:
    """The :class:`SwitchPlan` on a contiguous input of ``shape`` and ``dtype``, built once (on a GPU's
    small shapes a layer is bound by host time)."""
    n, c = shape[:2]
    s = _positions(shape)
    grid, block = _grid(shape)
    count = n * s
    return SwitchPlan(
        grid=grid,
        block=block,
        pools_grid=(n + c,),
        pools_block=_block(max(n, c)),
        sizes=(s, n, c),
        unbias=split_float(count / max(count - 1, 1)),
        options=dict(HAS_W=has_w, HAS_B=has_b, ACC=_acc(dtype)),
    )


def switch_pools(
    mean: Tensor,
    var: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    momentum: float,
    training: bool,
    plan: SwitchPlan,
) -> tuple[Tensor, Tensor]:
    """The layer statistics per sample (2, N) and the batch statistics per channel (2, C) from the
    planes' (N, C) moments; in training the running statistics move towards the batch ones (in place),
    in eval the batch statistics are the running ones."""
    _, n, c = plan.sizes
    rows = torch.empty(2, n, dtype=mean.dtype, device=mean.device)
    cols = torch.empty(2, c, dtype=mean.dtype, device=mean.device)
    _triton._launch(
        _pools_kernel, plan.pools_grid, mean, var, rows, cols, running_mean, running_var, *split_float(momentum),
        *plan.unbias, n, c, TRAINING=training, BLOCK=plan.pools_block, ACC=plan.options["ACC"],
    )  # fmt: skip
    if training:
        written_in_place(running_mean, running_var)
    return rows, cols


def switch_map(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    rows: Tensor,
    cols: Tensor,
    params: Params,
    eps: float,
    plan: SwitchPlan,
) -> Tensor:
    """SwitchNorm's output in ``x``'s dtype."""
    y = torch.empty_like(x)
    _triton._launch(
        _map_kernel, plan.grid, x, y, mean, var, rows, cols, *_pointers(params, mean), eps, *plan.sizes,
        BLOCK=plan.block, **plan.options,
    )  # fmt: skip
    return y


def switch_backward(
    g: Tensor,
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    rows: Tensor,
    cols: Tensor,
    params: Params,
    eps: float,
    training: bool,
    plan: SwitchPlan,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor, Tensor]:
    """``(∂L/∂x, ∂L/∂γ, ∂L/∂β, ∂L/∂λ, ∂L/∂λ')``, each parameter's gradient in its dtype (None for an
    absent γ or β)."""
    _, n, c = plan.sizes
    pointers = _pointers(params, mean)
    terms = torch.empty(4, n, c, dtype=mean.dtype, device=x.device)
    row_out = torch.empty(4, n, dtype=mean.dtype, device=x.device)
    col_out = torch.empty(2, c, dtype=mean.dtype, device=x.device)
    grads = [None if p is None else torch.empty_like(p) for p in params]
    stats = (mean, var, rows, cols)
    _triton._launch(
        _sums_kernel,
        (n * c,),
        g,
        x,
        terms,
        *stats,
        *pointers,
        eps,
        *plan.sizes,
        BLOCK=plan.block,
        **plan.options,
    )
    _triton._launch(
        _pools_backward_kernel, plan.pools_grid, terms, mean, var, row_out, col_out, *_pointers(grads[:2], mean),
        n, c, BLOCK=plan.pools_block, **plan.options,
    )  # fmt: skip
    dx = torch.empty_like(x)
    _triton._launch(
        _input_grad_kernel, plan.grid, g, x, dx, terms, *stats, row_out, col_out, *pointers, *grads[2:], eps,
        *plan.sizes, TRAINING=training, BLOCK=plan.block, **plan.options,
    )  # fmt: skip
    return dx, *grads
