"""Every plugin under bfloat16 autocast on CPU and with channels_last input, on both kernel paths
(small inputs: composite formulas; large: the fused Functions): what torch's own norms do."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomize_affine

from normbench import available_norms, build_norm

C = 16
SHAPES = {"composite": (8, C, 5, 5), "fused": (64, C, 16, 16)}  # 2^18 elements: above FUSED_MIN_ELEMENTS


@pytest.mark.parametrize("path", list(SHAPES))
@pytest.mark.parametrize("name", available_norms())
def test_bf16_autocast_keeps_dtype_stays_finite_and_matches_float64(name, path):
    gen = torch.Generator().manual_seed(0)
    module = build_norm(name, C).train()
    randomize_affine(module)
    reference = copy.deepcopy(module).double()
    x = torch.randn(SHAPES[path], generator=gen).bfloat16()
    upstream = torch.randn(SHAPES[path], generator=gen)
    xb = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(xb)
    assert y.dtype == torch.bfloat16  # torch's norms return the input's dtype under autocast
    (y.float() * upstream).sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(xb.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
    expected = reference(x.double())  # the same bf16-rounded input, in float64
    torch.testing.assert_close(y.double(), expected, rtol=0.05, atol=0.05)
    for name_, buf in module.named_buffers():  # running statistics stay float32 and close to float64's
        if buf.is_floating_point():
            assert buf.dtype == torch.float32
            torch.testing.assert_close(
                buf.double(), dict(reference.named_buffers())[name_], rtol=0.02, atol=0.02
            )


@pytest.mark.parametrize("path", list(SHAPES))
@pytest.mark.parametrize("name", available_norms())
def test_channels_last_input_gives_channels_last_output_and_equal_values(name, path):
    module = build_norm(name, C).train()
    randomize_affine(module)
    twin = copy.deepcopy(module)
    x = torch.randn(SHAPES[path], generator=torch.Generator().manual_seed(1))
    y = module(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, twin(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", list(SHAPES))
@pytest.mark.parametrize("name", available_norms())
def test_a_float16_module_keeps_its_statistics_in_float32(name, path):
    """A model cast with ``.half()`` (no autocast) on activations near 300: their squares pass float16's
    largest value (65,504), where moments kept in float16 were inf. EvoNorm-B0, EvoNorm-S0 and
    SwitchNorm gave NaN or zero outputs, FRN and RMSNorm zeros on large inputs; torch's norms keep such
    statistics in float32, and so does every plugin: outputs and gradients match float64's."""
    gen = torch.Generator().manual_seed(2)
    module = build_norm(name, C).train()
    randomize_affine(module)
    reference = copy.deepcopy(module).double()
    module.half()
    x = (torch.randn(SHAPES[path], generator=gen) * 100 + 300).half()
    upstream = torch.randn(SHAPES[path], generator=gen)
    xh, xd = x.clone().requires_grad_(), x.double().requires_grad_()
    y, expected = module(xh), reference(xd)
    assert y.dtype == torch.float16
    (y.double() * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(y.double(), expected, rtol=0.02, atol=0.02 * expected.abs().max().item())
    # gradients: all finite, and all close but where the output sits on a kink of the plugin's own
    # activation (FRN's TLU, EvoNorm-B0's max), where float16's rounding of it may choose the other side
    assert torch.isfinite(xh.grad).all()
    close = torch.isclose(xh.grad.double(), xd.grad, rtol=0.05, atol=0.05 * xd.grad.abs().max().item())
    assert close.double().mean() >= 0.999, f"{(~close).sum().item()} of {close.numel()} gradients differ"
