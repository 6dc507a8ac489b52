"""normbench.capture's counter of operators and of the bytes they move (the CUDA graph capture itself
is checked on a GPU by scripts/check_capture.py)."""

from __future__ import annotations

import torch

from normbench.capture import OperatorCount
from normbench.population.optim import PopulationOptimizer

F32 = 4  # bytes


def test_each_operator_is_charged_the_tensors_it_reads_and_writes():
    """In place: read and written; ``out=``: written; broadcast: the memory it spans; several new
    outputs: each written; views: nothing."""
    a, b = torch.randn(4, 8, 3), torch.randn(4, 3, 5)
    p, g, factor = torch.randn(100), torch.randn(100), torch.randn(4, 1, 1)
    y, x = torch.randn(4, 8, 5), torch.randn(2, 6)
    with OperatorCount() as counted:
        torch.bmm(a, b)
        p.add_(g)
        torch.where(p > 0, p, g, out=g)
        y.mul_(factor)
        torch.native_batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
        p.view(10, 10).t()
        torch.ops.aten._unsafe_view(y, (160,))  # a view its schema does not mark as one
    assert counted.count == 7
    assert dict(counted.bytes) == {
        "aten::bmm": (4 * 8 * 3 + 4 * 3 * 5 + 4 * 8 * 5) * F32,
        "aten::add_": 3 * 100 * F32,
        "aten::gt": 100 * F32 + 100,  # a bool each
        "aten::where": 100 + 3 * 100 * F32,
        "aten::mul_": (2 * 4 * 8 * 5 + 4) * F32,  # the factor: 4 values broadcast over 40 each
        "aten::native_batch_norm": (2 * 12 + 2 * 6) * F32,  # input, output, mean and 1/std
        "aten::_unsafe_view": 0,
    }


def test_a_populations_sgd_step_moves_eleven_passes_over_its_parameters():
    """torch's single-tensor SGD with momentum and weight decay, per parameter tensor of n values:
    d = g + wd·p (g read and written, p read), buf = μ·buf (read, written), buf += d (read, written,
    d read), p −= lr·buf (read, written, buf read): 11 passes, plus each per-member factor once."""
    k, shapes = 3, [(3, 5, 4), (3, 4)]
    params = [torch.randn(s) for s in shapes]
    full = torch.full((k,), 0.5, dtype=torch.float64)
    opt = PopulationOptimizer("sgd", params, full, full * 1e-3)
    alive, lr = torch.ones(k, dtype=torch.bool), torch.full((k,), 0.1, dtype=torch.float64)
    opt.step([torch.randn(s) for s in shapes], lr, alive, all_alive=True)  # makes the momentum buffers
    with OperatorCount() as counted:
        opt.step([torch.randn(s) for s in shapes], lr, alive, all_alive=True)
    values = sum(p.numel() for p in params)
    factors = len(shapes) * k * F32  # one (K, 1, ...) factor per parameter tensor and operation
    assert counted.bytes["aten::addcmul_"] == 2 * 3 * values * F32 + 2 * factors
    assert counted.bytes["aten::mul_"] == 2 * values * F32 + factors
    assert counted.bytes["aten::add_"] == 3 * values * F32 + 2 * 8  # and the step count (float64) + 1
