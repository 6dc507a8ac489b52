"""Triton kernels of the plugins' path on CUDA (:mod:`normbench.accel.planes`).

Every kernel works on a contiguous (N, C, *spatial) tensor seen as P = N·C planes of S positions and
computes in float32 (float64 for float64 input), whatever the storage dtype. :func:`plane_moments`
gives each plane's mean and variance (two passes over the plane, mean then centred squares).

The affine family (:func:`group_affine`, :func:`group_affine_backward`): normalization over groups
of planes (instance, layer, group, batch and ghost-batch statistics), with or without centring, and
FRN's TLU, EvoNorm-S0's gate or EvoNorm-B0's max as the activation; each program combines its
group's statistics from the planes' moments, so forward and backward take two launches each and no
small-tensor op in between (the backward's second launch also sums the parameters' gradients over the
samples). Eight memory passes in all, as native BatchNorm.

SwitchNorm's mixture has its own kernels (:mod:`normbench.accel._triton_switch`).

Tests run them on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from normbench.norms._stats import last_group

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of torch come without Triton; the plugins then use their torch path
    triton = None

AVAILABLE = triton is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
MAX_BLOCK = 1024


def _power_of_2(n: int) -> int:
    """The smallest power of 2 >= n; plain Python, as Triton's own helper costs microseconds of host time
    per call (it is a constexpr function) and sits on every launch."""
    return 1 << max(n - 1, 0).bit_length()


def _block(positions: int) -> int:
    return min(MAX_BLOCK, _power_of_2(positions))


def _acc(dtype: torch.dtype):
    """The kernels' accumulator for inputs of ``dtype``."""
    return tl.float64 if dtype == torch.float64 else tl.float32


if AVAILABLE:
    SAMPLE_BLOCK = tl.constexpr(64)  # samples summed at a time into a parameter's gradient

    @triton.jit
    def _moments_kernel(x_ptr, mean_ptr, var_ptr, S, BLOCK: tl.constexpr, ACC: tl.constexpr):
        p = tl.program_id(0)
        base = x_ptr + p.to(tl.int64) * S
        offs = tl.arange(0, BLOCK)
        total = tl.zeros([BLOCK], ACC)
        for start in range(0, S, BLOCK):
            total += tl.load(base + start + offs, mask=start + offs < S, other=0.0).to(ACC)
        mean = tl.sum(total, 0) / S
        squares = tl.zeros([BLOCK], ACC)
        for start in range(0, S, BLOCK):
            inside = start + offs < S
            d = tl.where(inside, tl.load(base + start + offs, mask=inside, other=0.0).to(ACC) - mean, 0.0)
            squares += d * d
        tl.store(mean_ptr + p, mean)
        tl.store(var_ptr + p, tl.sum(squares, 0) / S)

    # The affine family: y = (x − μ_g) r_g w_c + b_c with r_g = (σ²_g + eps)^(-1/2) over groups of M
    # consecutive samples (the last group: samples LAST to N − 1, see last_group) × CG consecutive
    # channels × all positions, combined in each program from the planes' moments (no launch in
    # between); without CENTER, μ_g = 0 and σ²_g = E x². An activation ACT with a per-channel parameter
    # t: TLU (FRN) y = max(y, t_c); GATE (EvoNorm-S0) y = x sigmoid(t_c x) r_g w_c + b_c (the variance
    # centred, x not).

    @triton.jit
    def _group_of(p, C, M, LAST, N, CG, BLOCK_G: tl.constexpr):
        """The planes of plane p's group and which of them exist (a BLOCK_G vector), p's channel and the
        group's number of planes."""
        n = p // C
        c = p % C
        first = tl.minimum((n // M) * M, LAST)
        size = tl.where(first == LAST, N - LAST, M) * CG
        r = tl.arange(0, BLOCK_G)
        planes = (first + r // CG) * C + (c // CG) * CG + r % CG
        return planes, r < size, c, size

    @triton.jit
    def _pooled(mean_ptr, var_ptr, planes, inside, count, ACC: tl.constexpr):
        """Mean and biased variance of a group from its planes' moments (law of total variance, as a sum
        of squares)."""
        pm = tl.load(mean_ptr + planes, mask=inside, other=0.0).to(ACC)
        pv = tl.load(var_ptr + planes, mask=inside, other=0.0).to(ACC)
        mu = tl.sum(pm, 0) / count
        d = tl.where(inside, pm - mu, 0.0)
        return mu, (tl.sum(pv, 0) + tl.sum(d * d, 0)) / count

    @triton.jit
    def _group_stats(mean_ptr, var_ptr, planes, inside, count, eps, CENTER: tl.constexpr, ACC: tl.constexpr):
        if CENTER:
            mu, second = _pooled(mean_ptr, var_ptr, planes, inside, count, ACC)
        else:
            pm = tl.load(mean_ptr + planes, mask=inside, other=0.0).to(ACC)
            pv = tl.load(var_ptr + planes, mask=inside, other=0.0).to(ACC)
            mu = tl.sum(pm, 0) * 0.0
            second = (tl.sum(pv, 0) + tl.sum(pm * pm, 0)) / count
        return mu, 1.0 / tl.sqrt(second + eps)

    @triton.jit
    def _wide(pair_hi, pair_lo, ACC: tl.constexpr):
        """A float passed as two float32 halves (:func:`split_float`), in ACC."""
        one = tl.full([], 1.0, ACC)
        return pair_hi * one + pair_lo * one

    @triton.jit
    def _move_towards(ptr, c, target, rate, ACC: tl.constexpr):
        """``ptr[c] += rate · (target − ptr[c])`` in ptr's dtype, as torch's ``lerp_``."""
        old = tl.load(ptr + c).to(ACC)
        tl.store(ptr + c, (old + rate * (target - old)).to(ptr.dtype.element_ty))

    @triton.jit
    def _running_update(
        mean_ptr, var_ptr, rm_ptr, rv_ptr, batches_ptr, c, momentum, momentum_lo, S, C, M, LAST, N,
        RUNNING: tl.constexpr, CUMULATIVE: tl.constexpr, BLOCK_G: tl.constexpr, ACC: tl.constexpr,
    ):  # fmt: skip
        """Channel c's running statistics (the mean too if RUNNING is 2) move towards the average over its
        groups of samples (M consecutive ones, the last from LAST to N − 1) of their mean and unbiased
        variance, at the rate momentum, or 1 / batches (the cumulative average)."""
        r = tl.arange(0, BLOCK_G)
        total_mean = tl.sum(tl.zeros([BLOCK_G], ACC), 0)
        total_var = tl.sum(tl.zeros([BLOCK_G], ACC), 0)
        for first in range(0, LAST + 1, M):
            size = tl.where(first == LAST, N - LAST, M)
            mu, var = _pooled(mean_ptr, var_ptr, (first + r) * C + c, r < size, size, ACC)
            count = size.to(ACC) * S
            total_mean += mu
            total_var += var * count / tl.maximum(count - 1.0, 1.0)
        groups = LAST // M + 1
        if CUMULATIVE:
            rate = 1.0 / tl.load(batches_ptr).to(ACC)
        else:
            rate = _wide(momentum, momentum_lo, ACC)
        if RUNNING == 2:
            _move_towards(rm_ptr, c, total_mean / groups, rate, ACC)
        _move_towards(rv_ptr, c, total_var / groups, rate, ACC)

    @triton.jit
    def _channel_param(ptr, c, default, HAS: tl.constexpr, ACC: tl.constexpr):
        if HAS:
            value = tl.load(ptr + c).to(ACC)
        else:
            value = default
        return value

    @triton.jit
    def _plane_coefficients(
        mean_ptr, var_ptr, w_ptr, b_ptr, t_ptr, aux_ptr, p, eps, C, M, LAST, N, CG,
        HAS_W: tl.constexpr, HAS_B: tl.constexpr, CENTER: tl.constexpr, ACT: tl.constexpr,
        BLOCK_G: tl.constexpr, ACC: tl.constexpr,
    ):  # fmt: skip
        """μ_g, r_g, w_c, b_c and t_c of plane p; RENORM: w_c r'_c and b_c + w_c d'_c."""
        planes, members, c, size = _group_of(p, C, M, LAST, N, CG, BLOCK_G)
        mu, r = _group_stats(mean_ptr, var_ptr, planes, members, size, eps, CENTER, ACC)
        w = _channel_param(w_ptr, c, 1.0, HAS_W, ACC)
        b = _channel_param(b_ptr, c, 0.0, HAS_B, ACC)
        t = _channel_param(t_ptr, c, 0.0, ACT != 0, ACC)
        if ACT == -1:
            rc, dc = _renorm(mu, r, t, t_ptr + C, t_ptr + 2 * C, aux_ptr, c, eps, ACC)
            b += w * dc
            w *= rc
        return mu, r, w, b, t

    @triton.jit
    def _ramp(bounds_ptr, k, step, ACC: tl.constexpr):
        """BatchRenorm's limit k (0: r_max, 1: d_max) at the step: initial + rise · clamp((step + offset)
        / span, 0, 1), with bounds = (offset, span, initial, rise), four pairs."""
        offset = tl.load(bounds_ptr + k).to(ACC)
        span = tl.load(bounds_ptr + 2 + k).to(ACC)
        progress = tl.minimum(tl.maximum((step + offset) / span, 0.0), 1.0)
        return tl.load(bounds_ptr + 4 + k).to(ACC) + tl.load(bounds_ptr + 6 + k).to(ACC) * progress

    @triton.jit
    def _renorm(mu, r, running_mean, running_var_ptr, bounds_ptr, step_ptr, c, eps, ACC: tl.constexpr):
        """Batch Renormalization's r' = clip(σ_B / σ, 1/r_max, r_max) and d' = clip((μ_B − μ) / σ, ±d_max)
        with σ = (running variance + eps)^½, σ_B = 1 / r; r_max and d_max from the step and the ramps in
        bounds (:func:`_ramp`). The plugin's snapshot (running mean, running variance, bounds) is t, its
        step aux."""
        sigma = tl.sqrt(tl.load(running_var_ptr + c).to(ACC) + eps)
        step = tl.load(step_ptr).to(ACC)
        r_max, d_max = _ramp(bounds_ptr, 0, step, ACC), _ramp(bounds_ptr, 1, step, ACC)
        rc = tl.minimum(tl.maximum(1.0 / r / sigma, 1.0 / r_max), r_max)
        return rc, tl.minimum(tl.maximum((mu - running_mean) / sigma, -d_max), d_max)

    @triton.jit
    def _b0_scales(var_ptr, aux_ptr, p, C, r, eps, ACT: tl.constexpr, ACC: tl.constexpr):
        """EvoNorm-B0's batch term a (1 / r of the batch group, or from the running variance in aux) and
        instance term s of plane p."""
        if ACT == 3:
            a = 1.0 / r
        else:
            a = tl.sqrt(tl.load(aux_ptr + p % C).to(ACC) + eps)
        return a, tl.sqrt(tl.load(var_ptr + p).to(ACC) + eps)

    @triton.jit
    def _affine_kernel(
        x_ptr, y_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, t_ptr, aux_ptr, rm_ptr, rv_ptr, batches_ptr,
        eps, S, C, M, LAST, N, CG, momentum, momentum_lo,
        HAS_W: tl.constexpr, HAS_B: tl.constexpr, CENTER: tl.constexpr, ACT: tl.constexpr,
        RUNNING: tl.constexpr, CUMULATIVE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_G: tl.constexpr,
        ACC: tl.constexpr,
    ):  # fmt: skip
        """y; with RUNNING, the first program of channel c's first plane also moves c's running
        statistics (:func:`_running_update`; no program reads them)."""
        p = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < S
        mu, r, w, b, t = _plane_coefficients(
            mean_ptr, var_ptr, w_ptr, b_ptr, t_ptr, aux_ptr, p, eps, C, M, LAST, N, CG,
            HAS_W, HAS_B, CENTER, ACT, BLOCK_G, ACC,
        )  # fmt: skip
        base = p.to(tl.int64) * S
        x = tl.load(x_ptr + base + offs, mask=inside, other=0.0).to(ACC)
        if ACT >= 3:
            a, s = _b0_scales(var_ptr, aux_ptr, p, C, r, eps, ACT, ACC)
            y = x * w / tl.maximum(a, t * x + s) + b
        elif ACT == 2:
            y = x * tl.sigmoid(t * x) * (r * w) + b
        else:
            y = (x - mu) * (r * w) + b
        if ACT == 1:
            y = tl.maximum(y, t)
        tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=inside)
        if RUNNING > 0 and p < C and tl.program_id(1) == 0:
            _running_update(
                mean_ptr, var_ptr, rm_ptr, rv_ptr, batches_ptr, p, momentum, momentum_lo, S, C, M, LAST, N,
                RUNNING, CUMULATIVE, BLOCK_G, ACC,
            )  # fmt: skip

    @triton.jit
    def _affine_sums_kernel(
        g_ptr, x_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, t_ptr, aux_ptr, out_ptr, eps, S, C, M, LAST, N, CG, P,
        HAS_W: tl.constexpr, HAS_B: tl.constexpr, CENTER: tl.constexpr, ACT: tl.constexpr,
        BLOCK: tl.constexpr, BLOCK_G: tl.constexpr, ACC: tl.constexpr,
    ):  # fmt: skip
        """Per plane, into rows 0 to 3 of out: the plane's terms of ∂L/∂w (Σ g' x̂; RENORM Σ g' (x̂ r' +
        d')), Σ g' x, Σ g' and Σ (g − g') where g' is g where the TLU passes y (all of g without an
        activation); for GATE, r Σ g x σ, Σ g x σ, Σ g and r w Σ g x² σ (1 − σ) (σ = sigmoid(t x)). B0,
        with d = max(a, t x + s), m = [t x + s > a] and k = −g w x / d²: Σ g x / d, Σ k (1 − m), Σ g,
        Σ k m x and Σ k m into rows 0 to 4."""
        p = tl.program_id(0)
        base = p.to(tl.int64) * S
        offs = tl.arange(0, BLOCK)
        mu, r, w, b, t = _plane_coefficients(
            mean_ptr, var_ptr, w_ptr, b_ptr, t_ptr, aux_ptr, p, eps, C, M, LAST, N, CG,
            HAS_W, HAS_B, CENTER, ACT, BLOCK_G, ACC,
        )  # fmt: skip
        if ACT >= 3:
            a, s = _b0_scales(var_ptr, aux_ptr, p, C, r, eps, ACT, ACC)
        gx = tl.zeros([BLOCK], ACC)
        gs = tl.zeros([BLOCK], ACC)
        third = tl.zeros([BLOCK], ACC)
        fourth = tl.zeros([BLOCK], ACC)
        fifth = tl.zeros([BLOCK], ACC)
        for start in range(0, S, BLOCK):
            inside = start + offs < S
            g = tl.load(g_ptr + base + start + offs, mask=inside, other=0.0).to(ACC)
            x = tl.load(x_ptr + base + start + offs, mask=inside, other=0.0).to(ACC)
            if ACT == 1:
                passed = tl.where((x - mu) * (r * w) + b > t, g, 0.0)
                third += g - passed
                g = passed
            if ACT >= 3:
                u = t * x + s
                den = tl.maximum(a, u)
                q = g * x / den
                k = -q * w / den
                fifth += q
                gx += tl.where(u > a, 0.0, k)
                third += tl.where(u > a, k * x, 0.0)
                fourth += tl.where(u > a, k, 0.0)
            elif ACT == 2:
                gxs = g * x * tl.sigmoid(t * x)
                gx += gxs
                third += gxs * x * (1.0 - tl.sigmoid(t * x))
            else:
                gx += g * x
            gs += g
        own_gx = tl.sum(gx, 0)
        own_g = tl.sum(gs, 0)
        tl.store(out_ptr + P + p, own_gx)
        tl.store(out_ptr + 2 * P + p, own_g)
        if ACT == 1 or ACT >= 3:
            tl.store(out_ptr + 3 * P + p, tl.sum(third, 0))
        if ACT == 2:
            tl.store(out_ptr + 3 * P + p, r * w * tl.sum(third, 0))
        if ACT >= 3:
            tl.store(out_ptr + 4 * P + p, tl.sum(fourth, 0))
            row0 = tl.sum(fifth, 0)
        elif ACT == 2:
            row0 = r * own_gx
        else:
            row0 = r * (own_gx - mu * own_g)  # Σ g x̂
            if ACT == -1:  # ∂L/∂w = Σ g (x̂ r' + d')
                rc, dc = _renorm(mu, r, t, t_ptr + C, t_ptr + 2 * C, aux_ptr, p % C, eps, ACC)
                row0 = rc * row0 + dc * own_g
        tl.store(out_ptr + p, row0)

    @triton.jit
    def _channel_grad(sums_ptr, row, grad_ptr, c, C, N, P, ACC: tl.constexpr):
        """Channel c's gradient of a parameter: the sum over samples of its terms in that row of sums,
        stored in the parameter's dtype."""
        offs = tl.arange(0, SAMPLE_BLOCK)
        total = tl.zeros([SAMPLE_BLOCK], ACC)
        for start in range(0, N, SAMPLE_BLOCK):
            n = start + offs
            total += tl.load(sums_ptr + row * P + n * C + c, mask=n < N, other=0.0).to(ACC)
        tl.store(grad_ptr + c, tl.sum(total, 0).to(grad_ptr.dtype.element_ty))

    @triton.jit
    def _affine_input_grad_kernel(
        g_ptr, x_ptr, dx_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, t_ptr, aux_ptr, sums_ptr, dw_ptr, db_ptr, dt_ptr,
        eps, S, C, M, LAST, N, CG, P,
        HAS_W: tl.constexpr, HAS_B: tl.constexpr, CENTER: tl.constexpr, ACT: tl.constexpr,
        BLOCK: tl.constexpr, BLOCK_G: tl.constexpr, ACC: tl.constexpr,
    ):  # fmt: skip
        """dx = r (w g' − Σ_g w g' / n − x̂ r Σ_g w g' (x − μ) / n) over the n values of each group (no
        middle term without CENTER); GATE: dx = r w g σ (1 + t x (1 − σ)) − r³ (x − μ) Σ_g w g x σ / n.
        The first program of channel c's first plane sums rows 0, 2 and 3 of sums over the samples into
        ∂L/∂w, ∂L/∂b and ∂L/∂t."""
        p = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < S
        mu, r, w, b, t = _plane_coefficients(
            mean_ptr, var_ptr, w_ptr, b_ptr, t_ptr, aux_ptr, p, eps, C, M, LAST, N, CG,
            HAS_W, HAS_B, CENTER, ACT, BLOCK_G, ACC,
        )  # fmt: skip
        planes, members, _, size = _group_of(p, C, M, LAST, N, CG, BLOCK_G)
        if ACT == -1:  # a group is one channel, its weight w r'
            wg = tl.where(members, w, 0.0)
        elif HAS_W:
            wg = tl.load(w_ptr + planes % C, mask=members, other=0.0).to(ACC)
        else:
            wg = tl.where(members, 1.0, 0.0)
        sgx = tl.load(sums_ptr + P + planes, mask=members, other=0.0).to(ACC)
        sg = tl.load(sums_ptr + 2 * P + planes, mask=members, other=0.0).to(ACC)
        count = size * S * 1.0
        base = p.to(tl.int64) * S
        g = tl.load(g_ptr + base + offs, mask=inside, other=0.0).to(ACC)
        x = tl.load(x_ptr + base + offs, mask=inside, other=0.0).to(ACC)
        if ACT >= 3:  # B0: ∂L/∂a and ∂L/∂s reach x through the batch and instance variances
            a, s = _b0_scales(var_ptr, aux_ptr, p, C, r, eps, ACT, ACC)
            u = t * x + s
            den = tl.maximum(a, u)
            dx = g * w / den * (1.0 - tl.where(u > a, x * t / den, 0.0))
            dx += tl.load(sums_ptr + 4 * P + p).to(ACC) / s * (x - tl.load(mean_ptr + p).to(ACC)) / S
            if ACT == 3:
                dx += tl.sum(sgx, 0) * r * (x - mu) / count
        elif ACT == 2:
            sig = tl.sigmoid(t * x)
            dx = (
                r * w * g * sig * (1.0 + t * x * (1.0 - sig))
                - r * r * r * (x - mu) * tl.sum(wg * sgx, 0) / count
            )
        else:
            xhat = (x - mu) * r
            if ACT == 1:
                g = tl.where(xhat * w + b > t, g, 0.0)
            dx = w * g - xhat * r * tl.sum(wg * (sgx - mu * sg), 0) / count
            if CENTER:
                dx -= tl.sum(wg * sg, 0) / count
            dx = r * dx
        tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=inside)
        if p < C and tl.program_id(1) == 0:
            if HAS_W:
                _channel_grad(sums_ptr, 0, dw_ptr, p, C, N, P, ACC)
            if HAS_B:
                _channel_grad(sums_ptr, 2, db_ptr, p, C, N, P, ACC)
            if ACT > 0:
                _channel_grad(sums_ptr, 3, dt_ptr, p, C, N, P, ACC)


# Triton's generic launch binds and specializes every argument on every call (tens of microseconds
# of host time per launch, which bound these layers at small sizes); once a kernel is compiled for a
# specialization, later calls with the same specialization go straight to its launcher. That launcher
# (CompiledKernel.run with packed_metadata, the raw CUDA stream) is Triton's private API: it is used only
# on the Triton versions where it was measured and checked on a GPU (reports/bench/profile_cuda.txt,
# H200, Triton 3.6.0: 32.9 us per group_affine launch against 68.5 us through the public launch), and
# every other version takes the public launch, kernel[grid](...).
FAST_LAUNCH_TRITON = ((3, 6),)  # (major, minor) versions whose private launcher was measured
FAST_LAUNCH = (
    triton is not None and tuple(int(v) for v in triton.__version__.split(".")[:2]) in FAST_LAUNCH_TRITON
)
# per key: the compiled specialization and the values of the kernel's constexprs in its order; keys hold
# sizes, so a workload of many shapes would grow it without end: past MAX_COMPILED it starts over (the
# next launches go through Triton's generic launch once, which finds its own compiled kernels)
_compiled: dict[tuple, tuple[object, list]] = {}
MAX_COMPILED = 4096


@functools.cache
def _pointer_count(kernel) -> int:
    """How many of ``kernel``'s parameters are pointers: its leading ones, named ``*_ptr``
    (tests/test_planes.py checks that every kernel names them so, and passes tensors to them alone)."""
    return next(
        (i for i, name in enumerate(kernel.arg_names) if not name.endswith("_ptr")), len(kernel.arg_names)
    )


def _key(kernel, args: tuple, constexprs: dict) -> tuple:
    """What tells one compiled specialization of ``kernel`` from another, or finer: the device's index,
    each pointer's dtype and 16-byte alignment (what Triton specializes a pointer on) and every other
    argument's value (Triton specializes an int on being 1, on divisibility by 16 and on its range, a
    float on nothing)."""
    k = _pointer_count(kernel)
    return (
        kernel,
        args[0].get_device(),
        *[(a.dtype, a.data_ptr() % 16 == 0) for a in args[:k]],
        *args[k:],
        *constexprs.items(),
    )


def _launch(kernel, grid: tuple[int, ...], *args, **constexprs) -> None:
    """``kernel[grid](*args, **constexprs)`` (through the private launcher of a compiled
    specialization where :data:`FAST_LAUNCH`); the kernel's pointers must be its first parameters and
    its constexprs its last."""
    if not FAST_LAUNCH or INTERPRETED:
        kernel[grid](*args, **constexprs)
        return
    key = _key(kernel, args, constexprs)
    known = _compiled.get(key)
    if known is None:
        compiled = kernel[grid](*args, **constexprs)
        if len(_compiled) >= MAX_COMPILED:
            _compiled.clear()
        _compiled[key] = compiled, [constexprs[name] for name in kernel.arg_names[len(args) :]]
        return
    compiled, values = known
    grid = (*grid, 1, 1)
    stream = torch._C._cuda_getCurrentRawStream(args[0].get_device())
    compiled.run(
        grid[0],
        grid[1],
        grid[2],
        stream,
        compiled.function,
        compiled.packed_metadata,
        None,
        None,
        None,
        *args,
        *values,
    )


def plane_moments(x: Tensor, block: int | None = None) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of each plane of a contiguous (N, C, *) tensor, as (N, C) tensors in
    float32 (float64 for float64 input); ``block``: the kernel's block of positions if known (a
    :class:`Plan`'s)."""
    n, c = x.shape[:2]
    s = _positions(x.shape)
    stats = torch.float64 if x.dtype == torch.float64 else torch.float32
    mean = torch.empty(n, c, dtype=stats, device=x.device)
    var = torch.empty_like(mean)
    _launch(_moments_kernel, (n * c,), x, mean, var, s, BLOCK=block or _block(s), ACC=_acc(x.dtype))
    return mean, var


def _positions(shape: torch.Size) -> int:
    """Positions per (sample, channel) plane of an input of ``shape``."""
    return shape.numel() // (shape[0] * shape[1])


def _grid(shape: torch.Size) -> tuple[tuple[int, int], int]:
    """The elementwise kernels' grid (planes, blocks per plane) on an input of ``shape``, and its block."""
    s = _positions(shape)
    block = _block(s)
    return (shape[0] * shape[1], -(-s // block)), block


def split_float(value: float) -> tuple[float, float]:
    """``value`` as float32 ``(hi, lo)`` with ``hi + lo == value`` to ~1e-15: Triton passes a Python float
    to a kernel as float32, which would put float64 running statistics off by ~1e-8 relative."""
    hi = struct.unpack("f", struct.pack("f", value))[0]
    return hi, value - hi


def written_in_place(*tensors: Tensor) -> None:
    """Tell autograd that a kernel wrote these tensors, as an in-place torch op would (their version
    counters; a graph that saved one of them then fails loudly instead of using the new values)."""
    for t in tensors:
        torch.autograd.graph.increment_version(t)


NO_ACT, TLU_ACT, GATE_ACT, B0_ACT, B0_EVAL_ACT = 0, 1, 2, 3, 4
# Not an activation: Batch Renormalization's correction of the scale and shift (negative, so that the
# kernels' tests for activations leave it out).
RENORM_ACT = -1


class Family(NamedTuple):
    """A member of the affine family: its eps, its groups of ``samples`` × ``channels`` planes (the last
    group of samples as :func:`last_group` says), whether it centres, and its activation (``*_ACT``)."""

    eps: float
    samples: int
    channels: int
    center: bool
    act: int


class Plan(NamedTuple):
    """How the affine family's kernels run on an input of one shape and dtype: the elementwise kernels'
    grid, every kernel's block of positions, the scalar arguments (eps, S, C and the groups' M, LAST,
    N, CG), the compile-time options of the backward's kernels and of the forward's second (there without
    running statistics) and the backward's rows of sums per plane."""

    grid: tuple[int, int]
    block: int
    scalars: tuple[float, int, int, int, int, int, int]
    options: dict
    forward_options: dict
    sums_rows: int


@functools.lru_cache(maxsize=256)
def plan(shape: torch.Size, dtype: torch.dtype, family: Family, has_w: bool, has_b: bool) -> Plan:
    """The :class:`Plan` of ``family`` on a contiguous input of ``shape`` and ``dtype``, with or without a
    weight and a bias; built once (on a GPU's small shapes a layer is bound by host time, and every
    argument formed here is one less formed per step), so a change of :data:`MAX_BLOCK` needs
    ``plan.cache_clear()``."""
    n, c = shape[:2]
    f = family
    last = last_group(n, f.samples)
    grid, block = _grid(shape)
    options = dict(
        HAS_W=has_w, HAS_B=has_b, CENTER=f.center, ACT=f.act,
        BLOCK=block, BLOCK_G=_power_of_2(max(f.samples, n - last) * f.channels), ACC=_acc(dtype),
    )  # fmt: skip
    return Plan(
        grid=grid,
        block=block,
        scalars=(f.eps, _positions(shape), c, f.samples, last, n, f.channels),
        options=options,
        forward_options=options | dict(RUNNING=0, CUMULATIVE=False),
        sums_rows=3 + (f.act > NO_ACT) + (f.act >= B0_ACT),
    )


class Running(NamedTuple):
    """Running statistics that a forward moves (in place) towards the average over the groups of samples
    of their mean and unbiased variance: at the rate ``momentum``, or ``1 / batches`` (a counter already
    incremented for this batch) when ``momentum`` is None; no running mean for ``mean=None``."""

    mean: Tensor | None
    var: Tensor
    momentum: float | None
    batches: Tensor | None = None


def group_affine(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    params: tuple[Tensor | None, ...],
    plan: Plan,
    running: Running | None = None,
) -> Tensor:
    """The family's output in ``x``'s dtype from the planes' moments (:func:`plane_moments`); ``params`` =
    (w, b, t, aux): t the activation's parameter, aux EvoNorm-B0's running variance; RENORM: t the
    running mean and variance and the ramps of r_max and d_max in one tensor (2C + 8), aux the step
    (snapshots, not the ``running`` statistics, which the same launch moves)."""
    y = torch.empty_like(x)
    if running is None:  # the common case, its options prepared in the plan
        moved, rate, options = (mean, mean, mean), (0.0, 0.0), plan.forward_options
    else:
        r = running
        moved = _pointers((r.mean, r.var, r.batches), mean)
        rate = split_float(0.0 if r.momentum is None else r.momentum)
        options = plan.options | dict(RUNNING=1 + (r.mean is not None), CUMULATIVE=r.momentum is None)
    _launch(
        _affine_kernel, plan.grid, x, y, mean, var, *_pointers(params, mean), *moved, *plan.scalars, *rate,
        **options,
    )  # fmt: skip
    if running is not None:
        written_in_place(running.var, *([] if running.mean is None else [running.mean]))
    return y


def group_affine_backward(
    g: Tensor, x: Tensor, mean: Tensor, var: Tensor, params: Sequence[Tensor | None], plan: Plan
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """``(∂L/∂x, ∂L/∂w, ∂L/∂b, ∂L/∂t)``, each parameter's gradient in its dtype (None for an absent
    parameter, and for t without an activation)."""
    planes = plan.grid[0]
    sums = torch.empty(plan.sums_rows, planes, dtype=mean.dtype, device=x.device)
    w, b, t, _ = params
    stats = (mean, var, *_pointers(params, mean), sums)
    scalars = (*plan.scalars, planes)
    _launch(_affine_sums_kernel, (planes,), g, x, *stats, *scalars, **plan.options)
    dx = torch.empty_like(x)
    dw = None if w is None else torch.empty_like(w)
    db = None if b is None else torch.empty_like(b)
    dt = torch.empty_like(t) if plan.options["ACT"] > NO_ACT else None
    _launch(
        _affine_input_grad_kernel, plan.grid, g, x, dx, *stats, *_pointers((dw, db, dt), mean), *scalars,
        **plan.options,
    )  # fmt: skip
    return dx, dw, db, dt


def _pointers(params: tuple[Tensor | None, ...], stand_in: Tensor) -> tuple[Tensor, ...]:
    """Pointer arguments, ``stand_in`` for an absent tensor (its kernel branch is compiled out)."""
    return tuple(stand_in if t is None else t for t in params)
