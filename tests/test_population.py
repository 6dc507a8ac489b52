"""Population conformance: every plugin whose spec claims ``population`` runs as a population of 3 under
``torch.func.vmap`` over stacked parameters and buffers and gives what 3 separate modules give —
outputs, input and parameter gradients, and buffers, over training steps and an eval forward — on
inputs small enough for the composite formulas and large enough for the CPU's fused Functions."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from normbench import available_norms, build_norm, norm_spec
from normbench.accel.cpu import FUSED_MIN_ELEMENTS

pytestmark = pytest.mark.filterwarnings(
    "ignore:There is a performance drop:UserWarning"
)  # functorch fallbacks
OPTIONS = {"ghost_batchnorm": {"ghost_batch_size": 4}, "batchrenorm": {"warmup_steps": 0}}
SMALL = {"images": (8, 6, 5, 5), "features": (8, 6)}
LARGE = (8, 32, 32, 20)  # per member, at least FUSED_MIN_ELEMENTS: the fused path outside vmap


def _cases():
    for name in available_norms():
        if not norm_spec(name).population:
            continue
        for label, shape in (*SMALL.items(), ("large", LARGE)):
            if len(shape) == 2 and norm_spec(name).min_spatial_positions > 1:
                continue
            yield pytest.param(name, shape, id=f"{name}-{label}")


@pytest.mark.parametrize("name, shape", list(_cases()))
def test_population_of_three_equals_three_separate_modules(name, shape):
    if shape == LARGE:
        assert torch.Size(shape).numel() >= FUSED_MIN_ELEMENTS
    torch.manual_seed(0)
    members = [build_norm(name, shape[1], **OPTIONS.get(name, {})).double() for _ in range(3)]
    for m in members:  # each member its own parameters
        with torch.no_grad():
            for p in m.parameters():
                p.uniform_(0.5, 1.5)
    separate = copy.deepcopy(members)
    params, buffers = stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta")

    def population(p, b, x):
        return functional_call(base, (p, b), (x,))

    for step in range(3):
        training = step < 2
        base.train(training)
        for m in separate:
            m.train(training)
        x = (torch.randn(3, *shape, dtype=torch.float64) * (1 + step) + step).requires_grad_()
        x_sep = x.detach().clone().requires_grad_()
        out = vmap(population, randomness="different")(params, buffers, x)
        ref = torch.stack([m(x_sep[i]) for i, m in enumerate(separate)])
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
        upstream = torch.randn_like(ref)
        out.backward(upstream)
        ref.backward(upstream)
        torch.testing.assert_close(x.grad, x_sep.grad, rtol=1e-8, atol=1e-8)
    for key, stacked in params.items():
        for i, m in enumerate(separate):
            torch.testing.assert_close(
                stacked.grad[i], dict(m.named_parameters())[key].grad, rtol=1e-8, atol=1e-8
            )
    for key, stacked in buffers.items():
        for i, m in enumerate(separate):
            torch.testing.assert_close(stacked[i], dict(m.named_buffers())[key], rtol=1e-10, atol=1e-10)
