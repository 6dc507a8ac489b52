"""Ghost BatchNorm: per-ghost-batch statistics, its running statistics, and equality with BatchNorm."""

from __future__ import annotations

import pytest
import torch
from conftest import SHAPES, C, randomize_affine
from helpers import QUICK, compose_cfg
from reference import ghost_batches, ghostbatchnorm, reference_running_stats

from normbench import build_norm
from normbench.experiment.run import execute
from normbench.norms.ghost_batchnorm import GhostBatchNorm
from normbench.schema import ConfigError


def batches(shape, n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1 for _ in range(n)]


@pytest.mark.parametrize("kind", list(SHAPES))
def test_equals_batchnorm_when_ghost_batch_is_the_batch(kind):
    shape = SHAPES[kind]
    ghost = build_norm("ghost_batchnorm", C, ghost_batch_size=shape[0]).double()
    bn = build_norm("batchnorm", C).double()
    randomize_affine(ghost)
    bn.load_state_dict(ghost.state_dict())
    for x in batches(shape):
        torch.testing.assert_close(ghost(x), bn(x), rtol=0, atol=0)
    torch.testing.assert_close(ghost.state_dict(), bn.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize(("n", "g"), [(8, 2), (8, 4), (9, 4), (10, 3), (11, 3), (9, 2)])
def test_each_ghost_batch_has_its_own_statistics(n, g):
    m = build_norm("ghost_batchnorm", C, ghost_batch_size=g, momentum=0.3).double()
    randomize_affine(m)
    xs = batches((n, C, 5))
    for x in xs:
        torch.testing.assert_close(m(x), ghostbatchnorm(x, m, True), rtol=1e-10, atol=1e-10)
    # running stats: per forward, EMA towards the average over ghost batches of (mean, unbiased var)
    mean = torch.zeros(C, dtype=torch.float64)
    var = torch.ones(C, dtype=torch.float64)
    for x in xs:
        stats = [reference_running_stats([part], 1.0, C) for part in ghost_batches(x, g)]
        mean = 0.7 * mean + 0.3 * torch.stack([s[0] for s in stats]).mean(0)
        var = 0.7 * var + 0.3 * torch.stack([s[1] for s in stats]).mean(0)
    torch.testing.assert_close(m.running_mean, mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.running_var, var, rtol=1e-10, atol=1e-10)


def test_state_dict_is_batchnorms():
    ghost = build_norm("gbn", C, ghost_batch_size=2)
    ghost(torch.randn(8, C, 3))
    bn = torch.nn.BatchNorm1d(C)
    bn.load_state_dict(ghost.state_dict())
    assert torch.equal(bn.running_mean, ghost.running_mean)


def test_bad_ghost_batch_size():
    with pytest.raises(ValueError, match="ghost_batch_size must be >= 1, got 0"):
        build_norm("ghost_batchnorm", C, ghost_batch_size=0)


def test_a_ghost_batch_of_one_sample_without_positions_names_the_option():
    """It was torch's "Expected more than 1 value per channel when training", which names no option;
    with positions one sample has statistics of its own and trains."""
    gbn = GhostBatchNorm(4, ghost_batch_size=1).train()
    with pytest.raises(ValueError) as exc:
        gbn(torch.randn(6, 4))
    assert str(exc.value) == (
        "GhostBatchNorm: ghost_batch_size=1 normalizes each sample alone, which has one value per channel "
        "in input of shape (6, 4); use ghost_batch_size >= 2"
    )
    x = torch.randn(6, 4, 5)
    y = gbn(x)
    expected = (x - x.mean(2, keepdim=True)) / (x.var(2, unbiased=False, keepdim=True) + gbn.eps).sqrt()
    torch.testing.assert_close(y, expected)  # each sample over its own positions (γ = 1, β = 0)


def test_a_run_whose_norm_cannot_normalize_its_training_batch_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError) as exc:
        execute(compose_cfg("norm=ghost_batchnorm", "norm.ghost_batch_size=1", *QUICK), tmp_path)
    assert str(exc.value).startswith(
        "norm=ghost_batchnorm cannot train task=mnist1d_mlp at batch_size=32: GhostBatchNorm: ghost_batch_size=1"
    )
    assert list(tmp_path.iterdir()) == []
