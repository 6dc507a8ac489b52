"""The blocked row kernels and moment helpers behind the fused plugins (normbench.norms._base).

The conformance suite's tensors fit in one block, so the block boundaries are exercised here by
shrinking the block size until every tensor spans several blocks with a ragged last one.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SHAPES, C, fits, randomize_affine

import normbench.norms._base as base
from normbench import available_norms, build_norm, norm_spec
from normbench.norms._base import instance_moments, pull_back, row_dot

BUILT_IN = [n for n in available_norms() if norm_spec(n).source.startswith("normbench.")]


def run_step(name: str, x: torch.Tensor, training: bool) -> tuple[torch.Tensor, ...]:
    """Output, input gradient, parameter gradients and buffers after one step from a fixed state."""
    module = build_norm(name, C).double().train(training)
    randomize_affine(module)
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y))
    return (y, x.grad, *(p.grad for p in module.parameters()), *module.buffers())


@pytest.mark.parametrize("kind", ["features", "1d", "2d"])
@pytest.mark.parametrize("name", BUILT_IN)
def test_many_blocks_give_the_same_numbers_as_one(name, kind, monkeypatch):
    shape = SHAPES[kind]
    if not fits(name, shape):
        return
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1
    positions = x[0, 0].numel()
    for training in (True, False):
        whole = run_step(name, x, training)
        monkeypatch.setattr(base, "BLOCK", 5 * positions)  # 5 rows per block: N·C = 24 or 48 rows
        blocked = run_step(name, x, training)
        monkeypatch.undo()
        assert len(whole) == len(blocked)
        for a, b in zip(whole, blocked, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_row_dot_equals_the_sum_of_products_across_blocks(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 23, 7, generator=gen, dtype=torch.float64)
    monkeypatch.setattr(base, "BLOCK", 3 * 7)  # 8 blocks, the last with 2 rows
    expected = torch.tensor(
        [sum(float(p) * float(q) for p, q in zip(ra, rb, strict=True)) for ra, rb in zip(a, b, strict=True)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(row_dot(a, b), expected, rtol=1e-12, atol=1e-12)


def test_instance_moments_are_accurate_far_from_zero(monkeypatch):
    """Two centred passes keep float32 variances accurate where E[x²] − E[x]² would lose them all."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 4, 50, generator=gen, dtype=torch.float64) * 0.1 + 1e3).float()
    truth = x.double().var(2, correction=0)
    monkeypatch.setattr(base, "BLOCK", 2 * 50)
    mean, var = instance_moments(x)
    torch.testing.assert_close(mean.double(), x.double().mean(2), rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), truth, rtol=1e-3, atol=0)
    naive = (x**2).mean(2) - x.mean(2) ** 2
    assert ((naive.double() - truth).abs() / truth).max() > 0.5  # the cancellation that is avoided


def test_pull_back_matches_autograd_and_sums_broadcast_outputs():
    gen = torch.Generator().manual_seed(0)
    mean, var, w = (
        torch.rand(3, 5, generator=gen, dtype=torch.float64),
        torch.rand(3, 5, dtype=torch.float64),
        None,
    )
    weight = torch.rand(5, generator=gen, dtype=torch.float64)

    def fn(m, v, w_none, wt):
        assert w_none is None
        per_channel = (v.mean(0, keepdim=True) + m.square().mean(0, keepdim=True)).sqrt() * wt  # (1, 5)
        return per_channel, m * v  # (1, 5) and (3, 5)

    grads = (
        torch.rand(3, 5, generator=gen, dtype=torch.float64),
        torch.rand(3, 5, generator=gen, dtype=torch.float64),
    )
    outputs, (g_mean, g_var, g_none, g_weight) = pull_back(fn, [mean, var, w, weight], grads)
    leaves = [t.clone().requires_grad_() for t in (mean, var, weight)]
    direct = fn(leaves[0], leaves[1], None, leaves[2])
    loss = (direct[0].expand(3, 5) * grads[0]).sum() + (direct[1] * grads[1]).sum()
    expected = torch.autograd.grad(loss, leaves)
    assert g_none is None and not any(o.requires_grad for o in outputs)
    for got, want in zip((g_mean, g_var, g_weight), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
