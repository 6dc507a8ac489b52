"""The group statistics behind the plugins' formulas (normbench.norms._stats) and the ``fused`` family of
their accelerated forms (normbench.accel): the same numbers as each plugin's formula.

The conformance suite's tensors are small enough for the formulas; here the fused Functions run on them
too (``runtime.kernels=fused``, no size threshold), with the block size shrunk until every tensor spans
several blocks with a ragged last one, and must give the formulas' numbers.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SHAPES, C, fits, randomize_affine

import normbench.accel.cpu as fused_kernels
import normbench.norms._stats as stats
from normbench import available_norms, build_norm, norm_spec
from normbench.accel import kernels, registered_kernels
from normbench.accel.cpu import pull_back
from normbench.norms._stats import group_dot, group_moments, group_view

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
def test_fused_kernels_over_many_blocks_equal_the_composite_formulas(name, kind, monkeypatch):
    """The fused Functions (hand-written backward, blocked loops) against the plugin's formula under
    autograd: outputs, every gradient and the running statistics after a step."""
    shape = SHAPES[kind]
    if not fits(name, shape):
        return
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1
    for training in (True, False):
        with kernels("torch"):
            composite = run_step(name, x, training)
        monkeypatch.setattr(fused_kernels, "FUSED_MIN_ELEMENTS", 0)
        # 3 samples per block, the last with fewer
        monkeypatch.setattr(stats, "BLOCK", 3 * C * x[0, 0].numel())
        with kernels("fused"):
            fused = run_step(name, x, training)
        monkeypatch.undo()
        assert len(composite) == len(fused)
        for a, b in zip(composite, fused, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("samples", "channels"), [(1, 1), (3, 1), (1, 2), (9, 6)])
def test_group_moments_and_dot_over_each_group(samples, channels, monkeypatch):
    """Groups of ``samples`` consecutive samples × ``channels`` consecutive channels × all positions."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 9, 6, 5, generator=gen, dtype=torch.float64) * 2 + 1
    monkeypatch.setattr(stats, "BLOCK", 2 * samples * 6 * 5)  # two groups of samples per block
    mean, var = group_moments(group_view(x, samples, channels))
    dot = group_dot(group_view(x, samples, channels), group_view(y, samples, channels))
    assert mean.shape == var.shape == dot.shape == (9 // samples, 6 // channels)
    for k in range(9 // samples):
        for g in range(6 // channels):
            part = x[k * samples : (k + 1) * samples, g * channels : (g + 1) * channels].flatten()
            other = y[k * samples : (k + 1) * samples, g * channels : (g + 1) * channels].flatten()
            expected_mean = sum(part.tolist()) / len(part)
            expected_var = sum((v - expected_mean) ** 2 for v in part.tolist()) / len(part)
            expected_dot = sum(p * q for p, q in zip(part.tolist(), other.tolist(), strict=True))
            assert mean[k, g].item() == pytest.approx(expected_mean, rel=1e-12)
            assert var[k, g].item() == pytest.approx(expected_var, rel=1e-12)
            assert dot[k, g].item() == pytest.approx(expected_dot, rel=1e-12)


def test_group_moments_are_accurate_far_from_zero(monkeypatch):
    """Two centred passes keep float32 variances accurate where E[x²] − E[x]² would lose them all."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 4, 50, generator=gen, dtype=torch.float64) * 0.1 + 1e3).float()
    truth = x.double().var(2, correction=0)
    monkeypatch.setattr(stats, "BLOCK", 2 * 4 * 50)
    mean, var = group_moments(group_view(x))
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


def test_every_fused_kernel_runs_in_the_comparison_above(monkeypatch):
    """Each registered ``fused`` form is taken by its plugin's module (and its subclasses') on those
    inputs (so the test above compares it, not the formula with itself), and by no module built under
    ``runtime.kernels=torch``. GroupNorm's and LayerNorm's are for (N, C) features only."""
    monkeypatch.setattr(fused_kernels, "FUSED_MIN_ELEMENTS", 0)
    fused = {k.plugin for k in registered_kernels() if k.family == "fused"}
    assert {p.__name__ for p in fused} == {
        "FilterResponseNorm", "RMSNorm", "EvoNormB0", "EvoNormS0", "GhostBatchNorm", "SwitchNorm",
        "GroupNorm", "LayerNorm",
    }  # fmt: skip
    features_only = tuple(p for p in fused if p.__name__ in ("GroupNorm", "LayerNorm"))
    for kind in ("2d", "features"):
        x = torch.randn(SHAPES[kind], dtype=torch.float64)
        for name in BUILT_IN:
            with kernels("fused"):
                module = build_norm(name, C).double()
            taken = [k.family for k in module.kernels if k.applies(module, x)]
            if kind == "2d":
                assert taken == (["fused"] if type(module) in fused - set(features_only) else []), name
            elif isinstance(module, features_only):  # GroupNorm's subclasses (GN+WS) included
                assert taken == ["fused"], name
            with kernels("torch"):
                assert build_norm(name, C).kernels == ()
