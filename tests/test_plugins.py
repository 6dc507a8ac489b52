"""Plugin-specific properties beyond the conformance suite, and every plugin in real (short) runs."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import C, randomize_affine
from helpers import QUICK, compose_cfg
from reference import batchrenorm as brn_reference
from torch import nn
from torch.nn.utils import parametrize

from normbench import ChannelLast, available_norms, build_norm, norm_spec
from normbench.config import ConfigError
from normbench.experiment.run import execute
from normbench.norms.frozen_batchnorm import FrozenBatchNorm
from normbench.tasks import NormLayers


def x64(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 + 1


@pytest.mark.parametrize("task", ["mnist1d_mlp", "mnist1d_cnn", "seq_transformer"])
@pytest.mark.parametrize("norm", available_norms())
def test_every_plugin_trains_where_it_applies_and_errors_clearly_elsewhere(norm, task, tmp_path):
    cfg = compose_cfg(f"task={task}", f"norm={norm}", "batch_size=8", *QUICK)
    spec = norm_spec(norm)
    if spec.running_stats and not spec.batch_dependent:  # statistics no run updates: mean 0, variance 1
        with pytest.raises(ConfigError, match=rf"norm={norm}: .*training never updates.*mean 0, variance 1"):
            execute(cfg, tmp_path)
        assert not list(tmp_path.iterdir())
        return
    if task != "mnist1d_cnn" and norm_spec(norm).min_spatial_positions > 1:
        with pytest.raises(ConfigError, match=rf"norm={norm} cannot build task={task}: .*shape \(\d+, \d+\)"):
            execute(cfg, tmp_path)
        return
    if task == "seq_transformer" and norm_spec(norm).adapt_layer is not None:  # pre-norms: no layer before
        with pytest.raises(
            ConfigError, match=rf"norm={norm} cannot build task={task}: {norm} adapts the conv"
        ):
            execute(cfg, tmp_path)
        return
    record = execute(cfg, tmp_path)
    # every plugin fits the conv net and must train there; elsewhere a plugin may legitimately blow up
    # at the default lr (e.g. evonorm_s0 on 2-channel token groups), which must be recorded, not crash
    allowed = ("completed",) if task == "mnist1d_cnn" else ("completed", "diverged")
    assert record["status"] in allowed, record.get("error")


def test_batchrenorm_without_correction_is_batchnorm():
    brn = build_norm("batchrenorm", C, r_max=1.0, d_max=0.0, warmup_steps=0).double()
    bn = build_norm("batchnorm", C).double()
    randomize_affine(brn)
    bn.load_state_dict(brn.state_dict())
    for step in range(4):
        x = x64(8, C, 5, seed=step)
        torch.testing.assert_close(brn(x), bn(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(brn.running_var, bn.running_var, rtol=1e-12, atol=1e-12)


def test_batchrenorm_schedule_and_correction():
    brn = build_norm(
        "batchrenorm", C, r_max=3.0, d_max=5.0, warmup_steps=2, r_max_steps=6, d_max_steps=4
    ).double()
    seen = []
    for step in range(8):
        seen.append(tuple(float(t) for t in brn.limits()))
        x = x64(8, C, 3, seed=step) * (step + 1)  # drifting scale so r and d clip
        expected = brn_reference(x, brn, True)
        torch.testing.assert_close(brn(x), expected, rtol=1e-10, atol=1e-10)
    assert seen[:3] == [(1.0, 0.0), (1.0, 0.0), (1.0, 0.0)]
    assert seen[3] == pytest.approx((1.5, 2.5)) and seen[4] == pytest.approx((2.0, 5.0))
    assert seen[7] == pytest.approx((3.0, 5.0))
    # gradients treat r and d as constants (stop-gradient), as the paper's backward pass does
    x, upstream = x64(8, C, 3).requires_grad_(), x64(8, C, 3, seed=5)
    x_ref = x.detach().clone().requires_grad_()
    state = copy.deepcopy(brn)
    brn(x).backward(upstream)
    brn_reference(x_ref, state, True).backward(upstream)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)


def test_batchrenorm_limits_follow_edits_step_ramps_and_dtype():
    brn = build_norm("batchrenorm", C, r_max=3.0, d_max=5.0, warmup_steps=2, r_max_steps=1, d_max_steps=6)
    limits = []
    for step in range(4):  # r_max's end before the warm-up's: a step at warmup_steps; d_max ramps
        brn.num_batches_tracked.fill_(step)
        limits.append(brn.limits().tolist())
    assert limits == [[1.0, 0.0], [1.0, 0.0], [3.0, 0.0], [3.0, 1.25]]
    brn.r_max = 2.0  # a cached schedule is not reused after an edit
    assert brn.limits().tolist() == [2.0, 1.25]
    brn.d_max_steps = 3
    assert brn.limits().tolist() == [2.0, 5.0]
    assert brn.double().limits().dtype == torch.float64
    assert brn.float().limits().dtype == torch.float32


def test_batchrenorm_ramp_scaled_to_the_run_equals_the_ramp_given_in_the_runs_steps():
    """ramp_reference_steps=N: the steps describe a run of N steps. On a run of N/10 steps the limits
    are step for step those of the ramp written in its own steps; before its length is known a
    training forward refuses, naming the option (the unscaled ramp would be used silently)."""
    scaled = build_norm(
        "batchrenorm", C, warmup_steps=20, r_max_steps=60, d_max_steps=40, ramp_reference_steps=100
    ).double()
    with pytest.raises(ValueError, match=r"^BatchRenorm: ramp_reference_steps=100 scales the ramp"):
        scaled(x64(8, C, 3))
    scaled.set_training_steps(10)
    given = build_norm("batchrenorm", C, warmup_steps=2, r_max_steps=6, d_max_steps=4).double()
    for step in range(8):
        x = x64(8, C, 3, seed=step) * (step + 1)
        assert scaled.limits().tolist() == given.limits().tolist()
        torch.testing.assert_close(scaled(x), given(x), rtol=0, atol=0)
    scaled.set_training_steps(1000)  # from what was given, not from the last scaling
    assert (scaled.warmup_steps, scaled.r_max_steps, scaled.d_max_steps) == (200, 600, 400)
    with pytest.raises(ValueError, match=r"ramp_reference_steps must be 0 .* got -1"):
        build_norm("batchrenorm", C, ramp_reference_steps=-1)


def test_a_warm_up_that_outlasts_the_run_is_a_warning_once_per_setting(caplog):
    """The committed study's BatchRenorm trained as BatchNorm at batch 16-128 with nothing said while
    it ran (its 5,000-step warm-up outlasted those runs); the report names it afterwards."""
    layers = [build_norm("batchrenorm", C, warmup_steps=1234) for _ in range(3)]
    with caplog.at_level("WARNING", logger="normbench.norms.batchrenorm"):
        for layer in layers:
            layer.set_training_steps(1000)
        build_norm("batchrenorm", C, warmup_steps=1234).set_training_steps(1235)  # warms up, then renorms
    assert [r.getMessage() for r in caplog.records] == [
        "BatchRenorm: its warm-up (warmup_steps=1234) outlasts the run's 1000 training steps, so it trains "
        "as BatchNorm (r_max 1, d_max 0 throughout); norm.ramp_reference_steps scales its ramp to the run's "
        "length"
    ]


def test_a_runs_batchrenorm_ramp_follows_its_length_and_old_runs_keep_their_identity(tmp_path):
    from normbench.experiment.identity import run_identity

    cfg = compose_cfg("norm=batchrenorm", "norm.ramp_reference_steps=40000", *QUICK)  # a 4-step run
    record = execute(cfg, tmp_path)
    assert record["status"] == "completed"
    from normbench.experiment.build import prepare_data, prepare_model

    layers = [
        m for m in prepare_model(cfg, prepare_data(cfg)).modules() if hasattr(m, "ramp_reference_steps")
    ]
    assert layers and {(m.warmup_steps, m.r_max_steps, m.d_max_steps) for m in layers} == {(0, 4, 2)}
    plain = compose_cfg("norm=batchrenorm", *QUICK)
    assert "ramp_reference_steps" not in run_identity(plain)[0]["norm"]  # the hash runs had before it
    assert run_identity(cfg)[0]["norm"]["ramp_reference_steps"] == 40000


def test_batchrenorm_compiles_to_one_graph_for_every_step():
    """The schedule reads the step counter as a tensor: torch.compile neither breaks the graph on it nor
    recompiles as it counts."""
    options = {"warmup_steps": 1, "r_max_steps": 3, "d_max_steps": 2}
    eager, compiled = (build_norm("batchrenorm", C, **options) for _ in range(2))
    torch._dynamo.reset()
    step = torch.compile(compiled, backend="eager", fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(5):
            x = x64(8, C, 3, seed=i).float() * (i + 1)
            torch.testing.assert_close(step(x), eager(x))
    torch.testing.assert_close(compiled.running_var, eager.running_var)


def test_rmsnorm_equals_torch_on_features_and_tokens():
    ours = build_norm("rmsnorm", C).double()
    randomize_affine(ours)
    ref = nn.RMSNorm(C, eps=1e-5).double()
    ref.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x64(5, C)), ref(x64(5, C)), rtol=1e-12, atol=1e-12)
    tokens = x64(2, 7, C)
    torch.testing.assert_close(ChannelLast(ours)(tokens), ref(tokens), rtol=1e-12, atol=1e-12)


def test_frn_on_features_needs_learnable_eps():
    with pytest.raises(ValueError, match=r"\(4, 6\) has one position per channel.*learnable_eps=True"):
        build_norm("frn", C)(x64(4, C))
    frn = build_norm("frn", C, learnable_eps=True).double()
    randomize_affine(frn)
    with torch.no_grad():
        frn.tau.fill_(-1.0)  # most outputs above the threshold, so every parameter gets a gradient
    assert frn(x64(4, C)).shape == (4, C)
    x = x64(3, C, 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda t, *p: frn(t), (x, *frn.parameters()))


@pytest.mark.parametrize("name", [n for n in available_norms() if norm_spec(n).replaces_activation])
def test_models_add_no_activation_after_norms_that_include_one(name):
    block = NormLayers(name).block(nn.Conv1d(1, C, 3), C)
    assert len(block) == 2 and not any(isinstance(m, nn.ReLU) for m in block)
    assert len(NormLayers("groupnorm").block(nn.Conv1d(1, C, 3), C)) == 3


def test_ws_groupnorm_standardizes_the_preceding_layer_once():
    conv = nn.Conv2d(3, 8, 3)
    layers = NormLayers("ws_groupnorm", {"num_groups": 4})
    block = layers.block(conv, 8)
    assert block[0] is conv and type(block[1]).__name__ == "WSGroupNorm"
    layers.block(conv, 8)  # a second adaptation does not stack a second standardization
    assert len(conv.parametrizations.weight) == 1
    w = conv.weight.detach().reshape(8, -1).double()
    w0 = conv.parametrizations.weight.original.detach().reshape(8, -1).double()
    mean, var = w0.mean(1, keepdim=True), w0.var(1, unbiased=False, keepdim=True)
    torch.testing.assert_close(w, (w0 - mean) / torch.sqrt(var + 1e-5), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w.mean(1), torch.zeros(8, dtype=torch.float64), atol=1e-6, rtol=0)
    conv(torch.randn(2, 3, 5, 5)).sum().backward()
    assert conv.parametrizations.weight.original.grad is not None


def test_a_norm_whose_layer_is_not_adapted_is_refused_not_trained_as_its_plain_norm():
    """The recurrent cell's and the Transformer's norms follow no layer that NormLayers adapts:
    ws_groupnorm there trained as plain GroupNorm under its own name."""
    layers = NormLayers("ws_groupnorm", {"num_groups": 4})
    with pytest.raises(
        ValueError, match=r"^ws_groupnorm adapts the conv/linear layer before each of its norms"
    ):
        layers(8)
    fc = layers.adapt(nn.Linear(3, 8))  # a layer a model adapts itself (the GAN's first, before a reshape)
    assert (
        len(fc.parametrizations.weight) == 1 and type(layers(8, after_adapted=True)).__name__ == "WSGroupNorm"
    )
    assert type(NormLayers("groupnorm")(8)).__name__ == "GroupNorm"  # a plugin without the hook: any place
    from normbench.tasks.gan import Generator

    generator = Generator((1, 8, 8), 4, 4, NormLayers("ws_groupnorm", {"num_groups": 2}))
    assert parametrize.is_parametrized(generator.fc, "weight")  # before its first norm, through a reshape


def test_switchnorm_records_its_mixture(tmp_path):
    sn = build_norm("switchnorm", C)
    mix = sn.extra_metrics()
    assert sum(v for k, v in mix.items() if k.startswith("mean_")) == pytest.approx(1.0)
    assert mix["mean_bn"] == pytest.approx(1 / 3)
    record = execute(compose_cfg("task=mnist1d_cnn", "norm=switchnorm", *QUICK), tmp_path)
    assert len(record["layers"]) == 3
    assert record["metrics"]["switchnorm_var_in"] == pytest.approx(
        sum(v["var_in"] for v in record["layers"].values()) / 3
    )


def test_frozen_batchnorm_refuses_a_batchnorm_without_running_statistics():
    with pytest.raises(ValueError, match="BatchNorm2d keeps no running statistics"):
        FrozenBatchNorm.from_batchnorm(nn.BatchNorm2d(C, track_running_stats=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frozen_batchnorm_conversion_keeps_values_device_and_dtype(dtype):
    bn = nn.BatchNorm2d(C).to(dtype)
    randomize_affine(bn)
    for step in range(3):
        bn(x64(4, C, 3, 3, seed=step).to(dtype))
    bn.eval()
    frozen = FrozenBatchNorm.from_batchnorm(bn)
    assert frozen.running_mean.dtype == dtype and list(frozen.parameters()) == []
    x = x64(4, C, 3, 3, seed=9).to(dtype)
    frozen.train()  # training mode changes nothing
    torch.testing.assert_close(frozen(x), bn(x))
    assert torch.equal(frozen.running_mean, bn.running_mean)
    back = frozen.to_batchnorm()
    assert back.weight.dtype == dtype and isinstance(back.weight, nn.Parameter)
    torch.testing.assert_close(back(x), bn(x))
    loaded = build_norm("frozen_batchnorm", C).to(dtype)
    loaded.load_state_dict(bn.state_dict())  # num_batches_tracked is accepted
    torch.testing.assert_close(loaded(x), bn(x))
