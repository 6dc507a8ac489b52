"""Wide populations: K members as one model K times wider (normbench.population.wide).

Conformance: every plugin whose spec says ``population="wide"`` computes, as its wide form over K·C
channels, what K separate modules compute - outputs, input and parameter gradients, and buffers over
two training steps and an eval forward - in float64 to 1e-9. Then the models: which architectures
widen, which fall back to vmap and why, and that a wide model equals its members."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import OPTION_CASES
from helpers import registered_plugin
from torch import nn

from normbench import available_norms, build_norm, norm_spec
from normbench.accel.cpu import FUSED_MIN_ELEMENTS
from normbench.norms.registry import register_norm
from normbench.population.stacked import Population
from normbench.population.wide import NoWideForm, WidePopulation, stack_population
from normbench.tasks.models import MLP, ConvNet, SequenceTransformer
from normbench.tasks.norm_layers import NormLayers
from normbench.tasks.recurrent import NormRNN

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
OPTIONS = {"ghost_batchnorm": {"ghost_batch_size": 4}, "batchrenorm": {"warmup_steps": 0}}
SHAPES = {"images": (8, 6, 5, 5), "features": (8, 6), "large": (8, 32, 32, 20)}
K = 3


def _wide_cases():
    for name in available_norms():
        if norm_spec(name).population != "wide":
            continue
        for label, shape in SHAPES.items():
            if len(shape) == 2 and norm_spec(name).min_spatial_positions > 1:
                continue
            yield pytest.param(name, shape, OPTIONS.get(name, {}), id=f"{name}-{label}")
    # every option away from its default (BatchNorm's statistics per (channel, position): C·P values)
    for name, options in OPTION_CASES:
        if norm_spec(name).population == "wide":
            options = {**options, "positions": 25} if "positions" in options else options
            values = "-".join(map(str, options.values()))
            yield pytest.param(name, SHAPES["images"], options, id=f"{name}-images-{values}")


def test_the_core_norms_have_wide_forms():
    wide = {n for n in available_norms() if norm_spec(n).population == "wide"}
    assert {"batchnorm", "layernorm", "groupnorm", "instancenorm", "identity", "batchrenorm"} <= wide
    assert {
        "ghost_batchnorm",
        "frn",
        "evonorm_b0",
        "evonorm_s0",
        "rmsnorm",
        "switchnorm",
        "sync_batchnorm",
    } <= wide
    assert "ws_groupnorm" in wide


@pytest.mark.parametrize("name, shape, options", list(_wide_cases()))
def test_wide_form_of_three_equals_three_separate_modules(name, shape, options):
    assert torch.Size(SHAPES["large"]).numel() >= FUSED_MIN_ELEMENTS  # the CPU's fused paths too
    torch.manual_seed(0)
    members = [build_norm(name, shape[1], **options).double() for _ in range(K)]
    for m in members:  # each member its own parameters and statistics
        with torch.no_grad():
            for t in (*m.parameters(), *(b for b in m.buffers() if b.is_floating_point())):
                t.uniform_(0.5, 1.5)
    separate = copy.deepcopy(members)
    pop = WidePopulation.stack([nn.Sequential(m) for m in members])
    for step in range(3):
        training = step < 2
        pop.base.train(training)
        for m in separate:
            m.train(training)
        x = (torch.randn(K, *shape, dtype=torch.float64) * (1 + step) + step).requires_grad_()
        x_sep = x.detach().clone().requires_grad_()
        out = pop.forward(x)
        ref = torch.stack([m(x_sep[i]) for i, m in enumerate(separate)])
        torch.testing.assert_close(out.reshape(ref.shape), ref, rtol=1e-9, atol=1e-9)
        upstream = torch.randn_like(ref)
        out.reshape(ref.shape).backward(upstream)
        ref.backward(upstream)
        torch.testing.assert_close(x.grad, x_sep.grad, rtol=1e-8, atol=1e-8)
    grads = pop.member_grads([p.grad for p in pop.leaves])
    assert len(grads) == len(list(separate[0].parameters()))
    for (key, _), grad in zip(pop.params.items(), grads, strict=True):
        for i, m in enumerate(separate):
            torch.testing.assert_close(
                grad[i], dict(m.named_parameters())[key[2:]].grad, rtol=1e-8, atol=1e-8
            )
    for key, stacked in pop.buffers.items():
        for i, m in enumerate(separate):
            torch.testing.assert_close(stacked[i], dict(m.named_buffers())[key[2:]], rtol=1e-10, atol=1e-10)


def _models(make, k=K):
    torch.manual_seed(0)
    models = [make() for _ in range(k)]
    for m in models:
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.3)
    return models


ARCHS = {
    "mlp": (lambda norm: MLP(40, 16, 2, 10, NormLayers(norm)), (4, 40)),
    "cnn1d": (lambda norm: ConvNet(1, 1, 8, 3, 10, NormLayers(norm), False, 5), (4, 1, 40)),
    "resnet1d": (lambda norm: ConvNet(1, 1, 8, 5, 10, NormLayers(norm), True, 3, (1,)), (4, 1, 40)),
    "cnn2d": (lambda norm: ConvNet(2, 3, 8, 3, 10, NormLayers(norm), False, 3, (0,)), (4, 3, 8, 8)),
    # images row by row; per-step norms whose γ/β every step shares
    "lstm": (lambda norm: NormRNN(6, 5, 8, 10, NormLayers(norm), norm_gain=0.1), (4, 1, 5, 6)),
    "gru-embedded": (lambda norm: NormRNN(1, 7, 8, 10, NormLayers(norm), cell="gru", embed=4), (4, 1, 7)),
}


@pytest.mark.parametrize(
    ("arch", "norm"),
    [
        (arch, norm)
        for norm in ["batchnorm", "groupnorm", "layernorm", "ws_groupnorm"]
        for arch in ARCHS
        if not (norm == "ws_groupnorm" and arch in ("lstm", "gru-embedded"))  # refused: no layer to adapt
    ],
)
def test_a_wide_model_computes_what_its_members_compute(arch, norm):
    make, shape = ARCHS[arch]
    models = _models(lambda: make(norm).double())
    pop = stack_population(copy.deepcopy(models), "wide")
    assert isinstance(pop, WidePopulation) and pop.form == "wide"
    x = torch.randn(K, *shape, dtype=torch.float64)
    y = torch.randint(0, 10, (K, shape[0]))
    losses = pop.losses(x, y)
    ref = torch.stack([nn.functional.cross_entropy(m(x[i]), y[i]) for i, m in enumerate(models)])
    torch.testing.assert_close(losses, ref, rtol=1e-10, atol=1e-12)
    grads = pop.member_grads(torch.autograd.grad(losses.sum(), pop.leaves))
    ref.sum().backward()
    for (name, _), g in zip(pop.params.items(), grads, strict=True):
        for i, m in enumerate(models):
            torch.testing.assert_close(g[i], m.get_parameter(name).grad, rtol=1e-9, atol=1e-12)
    for name, b in pop.buffers.items():  # running statistics moved by each member's own batch
        for i, m in enumerate(models):
            torch.testing.assert_close(b[i], m.get_buffer(name), rtol=1e-10, atol=1e-12)
    # unstacking gives each member's tensors back, exactly as the population holds them (the running
    # statistics of the population's forward equal the members' own only to rounding, checked above)
    out = _models(lambda: make(norm).double())
    pop.unstack_into(out)
    stacked = {**pop.params, **pop.buffers}
    for i, m in enumerate(out):
        for name, value in [*m.named_parameters(), *m.named_buffers()]:  # a tied γ/β under its first name
            assert torch.equal(value, stacked[name][i]), name


def test_shared_inputs_and_other_buffers_evaluate_every_member():
    make, shape = ARCHS["cnn1d"]
    models = _models(lambda: make("batchnorm").double())
    pop = stack_population(copy.deepcopy(models), "wide")
    x = torch.randn(*shape, dtype=torch.float64)
    buffers = {
        n: torch.rand_like(b) + 0.5 if b.is_floating_point() else b.clone() for n, b in pop.buffers.items()
    }
    pop.base.eval()
    out = pop.with_buffers(buffers).forward(x, shared_input=True)
    for i, m in enumerate(models):
        m.load_state_dict({**m.state_dict(), **{n: b[i] for n, b in buffers.items()}})
        torch.testing.assert_close(out[i], m.eval()(x), rtol=1e-10, atol=1e-12)


def _with_spectral_norm(model: nn.Module) -> nn.Module:
    """A parametrization that couples a weight's output channels (its largest singular value)."""
    nn.utils.parametrizations.spectral_norm(model.net[1])
    return model


class _VmapOnly(nn.BatchNorm1d):
    """A plugin that runs under vmap only."""


@pytest.mark.parametrize(
    "make, reason",
    [
        (
            lambda: ConvNet(1, 1, 8, 3, 10, NormLayers("vmaponly"), False, 5),
            "norm=vmaponly has no wide form (population='vmap')",
        ),
        (lambda: _with_spectral_norm(MLP(40, 16, 2, 10, NormLayers("groupnorm"))), "a parametrized Linear"),
        (
            lambda: SequenceTransformer(1, 8, 8, 1, 2, 10, NormLayers("layernorm"), "token"),
            "SequenceTransformer",
        ),
    ],
)
def test_models_without_a_wide_form_fall_back_to_vmap_and_say_why(make, reason):
    with registered_plugin("vmaponly", _VmapOnly, population="vmap"):  # every built-in has a wide form
        models = _models(make, 2)
        assert stack_population(models).form == "vmap"
        assert isinstance(stack_population(models, "vmap"), Population)
        with pytest.raises(NoWideForm, match=reason.replace("(", r"\(").replace(")", r"\)")):
            stack_population(models, "wide")


def test_a_population_of_one_is_a_copy_of_its_member_even_without_a_wide_form():
    """One member is its own wide model: the same modules (the Transformer's attention, a plugin's
    accelerated forms), its own copy of the tensors, and the member's outputs exactly."""
    (model,) = _models(lambda: SequenceTransformer(1, 8, 8, 1, 2, 10, NormLayers("layernorm"), "token"), 1)
    pop = stack_population([model], "wide")
    assert pop.form == "wide" and [type(m) for m in pop.base.modules()] == [type(m) for m in model.modules()]
    x = torch.randn(1, 4, 1, 8)
    assert torch.equal(pop.forward(x)[0], model(x[0]))
    with torch.no_grad():
        pop.params["head.weight"].add_(1.0)  # a copy: the member keeps its weights
    assert not torch.equal(pop.base.head.weight, model.head.weight)


def test_an_unknown_form_is_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match="population form 'fast': allowed are auto, wide, vmap"):
        stack_population(_models(lambda: MLP(4, 4, 1, 2, NormLayers("bn"))), "fast")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"population": "fast"}, "population='fast' is not one of 'wide', 'vmap', False"),
        ({"population": "vmap", "widen": lambda m, k: m}, "widen is given but population='vmap'"),
    ],
)
def test_the_registry_refuses_a_population_form_it_does_not_know(kwargs, message):
    with pytest.raises(ValueError, match=message):
        register_norm("neverregistered", **kwargs)


class _OldStyle(nn.Module):
    def __init__(self, num_channels: int) -> None:
        super().__init__()


def test_true_still_means_vmap_for_third_party_plugins():
    with registered_plugin("oldstyleplugin", _OldStyle, population=True) as name:
        assert norm_spec(name).population == "vmap"


def test_a_wide_linear_under_bfloat16_autocast_matches_its_members_and_keeps_float32_gradients():
    make, shape = ARCHS["mlp"]
    models = _models(lambda: make("layernorm"))
    pop = stack_population(copy.deepcopy(models), "wide")
    x, y = torch.randn(K, *shape), torch.randint(0, 10, (K, shape[0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = pop.losses(x, y)
        ref = torch.stack([nn.functional.cross_entropy(m(x[i]), y[i]) for i, m in enumerate(models)])
    torch.testing.assert_close(losses.float(), ref.float(), rtol=2e-2, atol=2e-2)
    grads = pop.member_grads(torch.autograd.grad(losses.sum(), pop.leaves))
    ref.sum().backward()
    for (name, p), g in zip(pop.params.items(), grads, strict=True):
        assert g.dtype == p.dtype == torch.float32, name
        for i, m in enumerate(models):
            torch.testing.assert_close(g[i], m.get_parameter(name).grad, rtol=5e-2, atol=5e-2)
