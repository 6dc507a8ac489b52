"""The four core plugins against torch.nn, their running statistics, and the identities between them."""

from __future__ import annotations

import pytest
import torch
from conftest import SHAPES, C, randomize_affine
from reference import reference_running_stats
from torch import nn

from normbench import build_norm

TORCH_BN = {1: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
TORCH_IN = {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d, 5: nn.InstanceNorm3d}


def batches(shape, n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2 for _ in range(n)]


def assert_same_outputs(ours, theirs, xs, modes=(True, False)):
    theirs.load_state_dict(ours.state_dict(), strict=False)
    for mode in modes:
        ours.train(mode)
        theirs.train(mode)
        for x in xs:
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("kind", list(SHAPES))
def test_batchnorm_running_stats_match_formula_and_torch(kind, momentum):
    shape = SHAPES[kind]
    xs = batches(shape)
    ours = build_norm("batchnorm", C, momentum=momentum).double()
    randomize_affine(ours)
    theirs = TORCH_BN[len(shape) if len(shape) > 2 else 1](C, momentum=momentum).double()
    theirs.load_state_dict(ours.state_dict())
    for x in xs:
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
    mean, var = reference_running_stats(xs, momentum, C)
    torch.testing.assert_close(ours.running_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_var, var, rtol=1e-12, atol=1e-12)
    assert int(ours.num_batches_tracked) == len(xs)
    ours.eval()
    theirs.eval()
    x = batches(shape, 1, seed=5)[0]
    expected = (x - mean.reshape(1, -1, *[1] * (x.dim() - 2))) / torch.sqrt(
        var.reshape(1, -1, *[1] * (x.dim() - 2)) + 1e-5
    ) * ours.weight.reshape(1, -1, *[1] * (x.dim() - 2)) + ours.bias.reshape(1, -1, *[1] * (x.dim() - 2))
    torch.testing.assert_close(ours(x), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


def test_batchnorm_two_samples_stores_unbiased_variance():
    # ANCHORS pitfall: with 2 values per channel the stored variance is twice the one used.
    x = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    bn = build_norm("batchnorm", 1, momentum=1.0).double()
    y = bn(x)
    torch.testing.assert_close(
        y.flatten(), torch.tensor([-1.0, 1.0], dtype=torch.float64) / (1 + 1e-5) ** 0.5
    )
    assert bn.running_var.item() == pytest.approx(2.0)


def test_batchnorm_without_tracking_uses_batch_stats_in_eval():
    bn = build_norm("batchnorm", C, track_running_stats=False).double().eval()
    theirs = nn.BatchNorm2d(C, track_running_stats=False).double().eval()
    assert bn.running_mean is None and "running_mean" not in bn.state_dict()
    assert_same_outputs(bn, theirs, batches(SHAPES["2d"], 2))


def test_batchnorm_state_dict_interoperates_with_torch_both_ways():
    ours = build_norm("bn", C).double()
    randomize_affine(ours)
    for x in batches(SHAPES["2d"], 3):
        ours(x)
    theirs = nn.BatchNorm2d(C).double()
    theirs.load_state_dict(ours.state_dict())  # strict: same keys
    assert_same_outputs(ours, theirs, batches(SHAPES["2d"], 1, seed=3), modes=(False,))
    back = build_norm("batchnorm", C).double()
    back.load_state_dict(theirs.state_dict())
    assert set(back.state_dict()) == set(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


def test_batchnorm_batch_of_one_feature_raises():
    bn = build_norm("batchnorm", C)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(torch.randn(1, C))


@pytest.mark.parametrize("kind", ["1d", "2d", "3d"])
def test_instancenorm_equals_torch(kind):
    shape = SHAPES[kind]
    ours = build_norm("in", C).double()
    randomize_affine(ours)
    theirs = TORCH_IN[len(shape)](C, affine=True).double()
    assert_same_outputs(ours, theirs, batches(shape, 2))


def test_instancenorm_rejects_features_instead_of_zeros():
    with pytest.raises(ValueError, match=r"spatial positions.*\(8, 6\)"):
        build_norm("instancenorm", C)(torch.randn(8, C))


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
@pytest.mark.parametrize("kind", list(SHAPES))
def test_groupnorm_equals_torch(kind, groups):
    ours = build_norm("groupnorm", C, num_groups=groups).double()
    randomize_affine(ours)
    theirs = nn.GroupNorm(groups, C).double()
    assert_same_outputs(ours, theirs, batches(SHAPES[kind], 2))


@pytest.mark.parametrize("kind", list(SHAPES))
def test_layernorm_equals_groupnorm_with_one_group(kind):
    ln = build_norm("layernorm", C).double()
    randomize_affine(ln)
    gn = build_norm("groupnorm", C, num_groups=1).double()
    gn.load_state_dict(ln.state_dict())
    ref = nn.GroupNorm(1, C).double()
    ref.load_state_dict(ln.state_dict())
    for x in batches(SHAPES[kind], 2):
        torch.testing.assert_close(ln(x), gn(x), rtol=0, atol=0)
        torch.testing.assert_close(ln(x), ref(x), rtol=1e-12, atol=1e-12)


def test_layernorm_equals_torch_layernorm_on_features():
    ln = build_norm("layernorm", C).double()
    randomize_affine(ln)
    ref = nn.LayerNorm(C).double()
    ref.load_state_dict(ln.state_dict())
    x = batches(SHAPES["features"], 1)[0]
    torch.testing.assert_close(ln(x), ref(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["1d", "2d", "3d"])
def test_groupnorm_with_c_groups_equals_instancenorm(kind, monkeypatch):
    import normbench.norms.groupnorm as groupnorm

    monkeypatch.setattr(groupnorm, "_WARNED", set())
    with pytest.warns(
        UserWarning, match=f"{C} groups on {C} channels has one channel per group: it is InstanceNorm"
    ):
        gn = build_norm("gn", C, num_groups=C).double()
    randomize_affine(gn)
    inn = build_norm("in", C).double()
    inn.load_state_dict(gn.state_dict())
    for x in batches(SHAPES[kind], 2):
        torch.testing.assert_close(gn(x), inn(x), rtol=1e-12, atol=1e-12)


def test_groupnorm_group_options():
    assert build_norm("groupnorm", 64).num_groups == 32
    assert build_norm("groupnorm", 256).num_groups == 32
    assert build_norm("groupnorm", 64, group_size=16).num_groups == 4
    # the default keeps 2+ channels per group: the largest divisor of C up to min(32, C / 2)
    assert [build_norm("groupnorm", c).num_groups for c in (32, 16, 48, 7, 3, 1)] == [16, 8, 24, 1, 1, 1]
    with pytest.raises(ValueError, match="num_channels=48 is not divisible by num_groups=32"):
        build_norm("groupnorm", 48, num_groups=32)
    with pytest.raises(ValueError, match="num_channels=12 is not divisible by group_size=5"):
        build_norm("groupnorm", 12, group_size=5)
    with pytest.raises(ValueError, match="not both"):
        build_norm("groupnorm", 12, num_groups=4, group_size=3)


def test_channel_last_adapter_token_and_sequence_layouts():
    from normbench import ChannelLast

    x = torch.randn(3, 7, C, dtype=torch.float64)
    ln = ChannelLast(build_norm("layernorm", C).double())
    ref = nn.LayerNorm(C).double()
    torch.testing.assert_close(ln(x), ref(x), rtol=1e-12, atol=1e-12)
    inn = ChannelLast(build_norm("instancenorm", C, affine=False).double(), layout="sequence")
    expected = nn.InstanceNorm1d(C).double()(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(inn(x), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="layout must be 'token' or 'sequence', got 'nlc'"):
        ChannelLast(ln.norm, layout="nlc")
    with pytest.raises(TypeError, match=r"ChannelLast wraps a norm module .*, got 'layernorm'"):
        ChannelLast("layernorm")
    for layout in ("token", "sequence"):  # the shape the caller passed, not the one the norm saw
        with pytest.raises(
            ValueError, match=rf"^ChannelLast: expected \(N, L, {C}\) input, got shape \(3, 7, 5\)$"
        ):
            ChannelLast(ln.norm, layout=layout)(x[..., :5])
    for torch_norm in (nn.LayerNorm(C), nn.BatchNorm1d(C), nn.GroupNorm(2, C)):  # torch's say theirs too
        with pytest.raises(
            ValueError, match=rf"^ChannelLast: expected \(N, L, {C}\) input, got shape \(3, 7, 5\)$"
        ):
            ChannelLast(torch_norm.double())(x[..., :5])


def test_batchnorm_without_pooling_normalizes_each_position_over_the_batch_alone():
    torch.manual_seed(0)
    bn = build_norm("batchnorm", 3, positions=6, momentum=0.5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(4, 3, 2, 3) * 2 + 1
    mean, var = x.mean(0, keepdim=True), x.var(0, unbiased=False, keepdim=True)
    gamma, beta = bn.weight.view(1, 3, 1, 1), bn.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(bn(x), (x - mean) / torch.sqrt(var + 1e-5) * gamma + beta)
    # running statistics per (channel, position), the unbiased variance, as torch's BatchNorm1d keeps them
    torch.testing.assert_close(bn.running_mean, 0.5 * mean.flatten())
    torch.testing.assert_close(bn.running_var, 0.5 + 0.5 * x.var(0, unbiased=True).flatten())
    bn.eval()
    expected = (x - bn.running_mean.view(1, 3, 2, 3)) / torch.sqrt(bn.running_var.view(1, 3, 2, 3) + 1e-5)
    torch.testing.assert_close(bn(x), expected * gamma + beta)


def test_batchnorm_positions_must_match_the_input():
    bn = build_norm("batchnorm", 3, positions=40)
    with pytest.raises(ValueError, match=r"positions=40\): the input has 20 positions per channel"):
        bn(torch.randn(2, 3, 20))
    with pytest.raises(ValueError, match=r"positions must be 0 .* got -1"):
        build_norm("batchnorm", 3, positions=-1)
