"""Conformance suite: every registered plugin (built-in or installed) is checked here.

Parametrized over ``available_norms()``, so a new plugin joins without new tests.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from conftest import OPTION_CASES, SHAPES, C, fits, randomize_affine
from reference import REFERENCES, reference_running_stats

import normbench.accel.cpu as fused_kernels
from normbench import available_norms, build_norm, norm_spec

NORMS = available_norms()
SHAPE_IDS = list(SHAPES)


def make(name: str, dtype: torch.dtype = torch.float64, **options) -> torch.nn.Module:
    module = build_norm(name, C, **options).to(dtype)
    randomize_affine(module)
    return module


def inputs(shape, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=dtype) * 2 + 1


@pytest.fixture(params=["composite", "fused"])
def kernel_path(request, monkeypatch):
    """The built-ins run their formula under autograd on small inputs and their fused forms
    (normbench.accel, hand-written backward) on large ones: check both on the small test tensors."""
    monkeypatch.setattr(fused_kernels, "FUSED_MIN_ELEMENTS", 10**12 if request.param == "composite" else 0)
    return request.param


@pytest.mark.parametrize("kind", SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NORMS)
def test_shape_and_dtype_preserved(name, dtype, kind):
    shape = SHAPES[kind]
    module = make(name, dtype)
    x = inputs(shape, dtype)
    if not fits(name, shape):
        with pytest.raises(ValueError, match=str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
            module(x)
        return
    for mode in (True, False):
        module.train(mode)
        y = module(x)
        assert y.shape == x.shape and y.dtype == dtype
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NORMS)
def test_wrong_rank_or_channels_names_shapes(name):
    module = make(name)
    for bad in [(4,), (2, C + 1, 3, 3), (1, C, 2, 2, 2, 2)]:
        with pytest.raises(ValueError, match=r"expected.*got \(" + str(bad[0])):
            module(torch.randn(bad, dtype=torch.float64))


@pytest.mark.parametrize("kind", SHAPE_IDS)
@pytest.mark.parametrize("name", NORMS)
def test_matches_reference_formula_train_and_eval(name, kind, kernel_path):
    if name not in REFERENCES:
        assert not norm_spec(name).source.startswith("normbench."), (
            f"built-in plugin {name} has no reference formula in tests/reference.py"
        )
        pytest.skip(f"third-party plugin {name}: no independent reference formula in normbench")
    shape = SHAPES[kind]
    if not fits(name, shape):
        return
    module = make(name)
    ref = REFERENCES[name]
    module.train()
    for step in range(3):  # several steps so running statistics move away from their init
        x = inputs(shape, seed=step)
        expected = ref(x, module, True)  # reads statistics before the step updates them
        torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)
    module.eval()
    x = inputs(shape, seed=99)
    torch.testing.assert_close(module(x), ref(x, module, False), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NORMS)
def test_gradcheck(name, kernel_path):
    module = make(name)
    for kind in ("1d", "features"):
        shape = SHAPES[kind]
        if not fits(name, shape):
            continue
        x = inputs((3, *shape[1:])).requires_grad_()
        params = tuple(p for p in module.parameters())
        for mode in (True, False):
            module.train(mode)
            assert torch.autograd.gradcheck(lambda x, *p: module(x), (x, *params), eps=1e-6)


def _first_sample_output(module, x):
    return module(x)[:1]


@pytest.mark.parametrize("name", NORMS)
def test_batch_dependence_claim(name):
    spec = norm_spec(name)
    shape = SHAPES["2d"]
    module = make(name)
    a = inputs(shape, seed=1)
    b = a.clone()
    b[1:] = inputs(shape, seed=2)[1:] * 3 - 2  # other samples change, sample 0 does not
    module.eval()
    torch.testing.assert_close(_first_sample_output(module, a), _first_sample_output(module, b))
    module.train()
    ya, yb = _first_sample_output(module, a), _first_sample_output(module, b)
    if spec.batch_dependent:
        assert not torch.allclose(ya, yb), f"{name} claims batch_dependent=True but is not"
    else:
        torch.testing.assert_close(ya, yb, msg=f"{name} claims batch_dependent=False but is not")


@pytest.mark.parametrize("name", NORMS)
def test_state_dict_deepcopy_pickle_roundtrip(name):
    shape = SHAPES["2d"]
    module = make(name)
    module.train()
    for step in range(3):
        module(inputs(shape, seed=step))
    module.eval()
    x = inputs(shape, seed=7)
    expected = module(x)
    fresh = build_norm(name, C).to(torch.float64)
    fresh.load_state_dict(module.state_dict())
    fresh.eval()
    for clone in (fresh, copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        torch.testing.assert_close(clone(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", NORMS)
def test_eval_mode_is_deterministic_and_stateless(name):
    module = make(name).eval()
    x = inputs(SHAPES["2d"])
    before = {k: v.clone() for k, v in module.state_dict().items()}
    first = module(x)
    assert torch.equal(first, module(x))
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), f"{name}: eval forward changed {k}"


@pytest.mark.parametrize("kind", SHAPE_IDS)
@pytest.mark.parametrize("name", NORMS)
def test_an_empty_batch_gives_an_empty_output_and_leaves_the_running_statistics(name, kind, kernel_path):
    """As torch's norms treat a batch of no samples (a detection head's batch of no boxes): an empty
    output of its shape that backpropagates, in both modes, and no floating buffer moved (statistics of
    nothing would be NaN)."""
    shape = (0, *SHAPES[kind][1:])
    if not fits(name, shape):
        return
    module = make(name)
    before = {k: v.clone() for k, v in module.state_dict().items() if v.is_floating_point()}
    for mode in (True, False):
        module.train(mode)
        x = inputs(shape).requires_grad_()
        y = module(x)
        assert y.shape == shape and y.dtype == x.dtype
        y.sum().backward()
        assert x.grad.shape == shape
    for k, v in before.items():
        assert torch.equal(module.state_dict()[k], v), f"{name}: an empty batch changed {k}"


@pytest.mark.parametrize("name", NORMS)
def test_spec_metadata_is_complete(name):
    spec = norm_spec(name)
    assert spec.name == name and spec.summary and "\n" not in spec.summary
    assert spec.paper, f"{name}: norm_spec has no paper reference"
    assert isinstance(spec.batch_dependent, bool) and isinstance(spec.running_stats, bool)
    module = build_norm(name, C)
    has_buffers = any(b is not None and b.is_floating_point() for b in module.buffers())
    assert has_buffers == spec.running_stats, f"{name}: running_stats claim vs buffers"


# An option with tests of its own: the ramp that follows a run's length (test_plugins.py)
OWN_TESTS = {("batchrenorm", "ramp_reference_steps")}
# Running statistics: the batch's mean and unbiased variance per channel, moved by momentum
BATCH_STATISTICS = {"batchnorm", "batchrenorm", "switchnorm", "sync_batchnorm"}


def test_every_option_of_every_built_in_has_a_case():
    covered = {(name, key) for name, options in OPTION_CASES for key in options}
    missing = (
        {
            (name, key)
            for name in NORMS
            if norm_spec(name).source.startswith("normbench.")
            for key in norm_spec(name).options
        }
        - covered
        - OWN_TESTS
    )
    assert not missing, f"add these options to OPTION_CASES: {sorted(missing)}"


@pytest.mark.parametrize(
    "name, options", OPTION_CASES, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in OPTION_CASES]
)
def test_options_match_the_reference_formula_outputs_gradients_and_statistics(name, options, kernel_path):
    module = make(name, **options)
    shape = SHAPES["2d"]
    xs = [inputs(shape, seed=step) for step in range(3)]
    module.train()
    for x in xs:
        ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        reference = copy.deepcopy(module)  # its parameters and statistics before the step
        expected = REFERENCES[name](theirs, reference, True)
        y = module(ours)
        torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
        upstream = inputs(shape, seed=50)
        y.backward(upstream)
        expected.backward(upstream)
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-8, atol=1e-8)
        for (key, p), q in zip(module.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-8, msg=key)
            p.grad = None
    if name in BATCH_STATISTICS and options.get("track_running_stats", True):
        features = [x.reshape(len(x), -1) for x in xs] if options.get("positions") else xs
        mean, var = reference_running_stats(features, module.momentum, features[0].shape[1])
        torch.testing.assert_close(module.running_mean, mean, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(module.running_var, var, rtol=1e-10, atol=1e-10)
    module.eval()
    x = inputs(shape, seed=99)
    torch.testing.assert_close(module(x), REFERENCES[name](x, module, False), rtol=1e-10, atol=1e-10)
