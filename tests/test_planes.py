"""The plugins' Triton path (normbench.accel.planes) equals their torch formulas: run on the CPU
through Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py), values, every gradient and the
running statistics, in float64 to 1e-9 and in bf16 under autocast to bf16 tolerance; and every kernel
compiles for a GPU."""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from normbench import build_norm, norm_spec
from normbench.accel import _triton, _triton_switch
from normbench.accel import planes as _planes
from tests.conftest import randomize_affine
from tests.helpers import ROOT

RENORM_FROM_THE_START = {"r_max": 1.5, "d_max": 0.5, "warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0}
CASES = [
    ("ghost_batchnorm", {"ghost_batch_size": 2}, (5, 4, 2, 3)),  # ghost batches of 2 and 3
    ("ghost_batchnorm", {"ghost_batch_size": 3, "momentum": None}, (8, 4, 2, 3)),  # of 3, 3 and 2
    # equal ghost batches: one launch moves the running statistics, here as a cumulative average
    ("ghost_batchnorm", {"ghost_batch_size": 2, "momentum": None}, (4, 4, 2, 3)),
    ("switchnorm", {}, (5, 4, 3, 3)),
    ("switchnorm", {"affine": False}, (3, 4, 2, 3)),
    # r_max 1.5 and d_max 0.5 from the first step: r clipped (σ_B ≈ 2 against the initial σ = 1), d partly
    ("batchrenorm", RENORM_FROM_THE_START, (5, 4, 2, 3)),
    ("groupnorm", {"num_groups": 2}, (3, 4, 2, 3)),
    ("instancenorm", {}, (3, 4, 7)),
    ("layernorm", {}, (3, 4, 7)),
    ("layernorm", {"affine": False}, (2, 4, 2, 3, 2)),
    ("rmsnorm", {}, (3, 4, 2, 3)),
    ("rmsnorm", {"bias": True}, (3, 4, 9)),
    ("rmsnorm", {"affine": False}, (3, 4, 2, 3)),
    ("frn", {}, (3, 4, 3, 3)),
    ("evonorm_b0", {}, (5, 4, 2, 3)),
    ("evonorm_s0", {"num_groups": 2}, (3, 4, 2, 3)),
    ("evonorm_s0", {"affine": False}, (3, 4, 5)),
]
# eval mode differs from training mode only where a plugin keeps running statistics
EVAL = {"switchnorm", "evonorm_b0"}
FIRST_OF_EACH = [case for i, case in enumerate(CASES) if case[0] not in {c[0] for c in CASES[:i]}]


@pytest.fixture
def triton_calls(monkeypatch) -> list[int]:
    """Route CPU tensors through the Triton path; the list counts its forward passes."""
    assert _triton.AVAILABLE and _triton.INTERPRETED, "the tests need triton and TRITON_INTERPRET=1"
    calls: list[int] = []
    moments = _triton.plane_moments

    def counted(x, *args):
        calls.append(x.shape[0])
        return moments(x, *args)

    monkeypatch.setattr(_triton, "plane_moments", counted)
    monkeypatch.setattr(_planes, "TRITON_DEVICES", {"cuda", "cpu"})
    monkeypatch.setattr(_planes, "NATIVE_BELOW", 0)
    return calls


def run(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, autocast: bool = False) -> dict:
    """Output, input and parameter gradients and buffers after one forward and backward."""
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = module(x)
    y.backward(g.to(y.dtype))
    out = {"y": y.detach(), "x.grad": x.grad}
    out |= {f"{k}.grad": p.grad for k, p in module.named_parameters()}
    return out | {k: b.clone() for k, b in module.named_buffers() if b.is_floating_point()}


def pair(name: str, options: dict, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    module = build_norm(name, 4, **options).to(dtype)
    randomize_affine(module)
    return module, copy.deepcopy(module)


@pytest.mark.parametrize(
    ("name", "options", "shape", "training"),
    [(*case, True) for case in CASES] + [(*case, False) for case in CASES if case[0] in EVAL],
    ids=[f"{n}-{o}" for n, o, _ in CASES] + [f"{n}-{o}-eval" for n, o, _ in CASES if n in EVAL],
)
def test_triton_path_equals_torch_formula_float64(triton_calls, monkeypatch, name, options, shape, training):
    assert_triton_path_equals_torch_formula(triton_calls, monkeypatch, name, options, shape, training)


def assert_triton_path_equals_torch_formula(
    triton_calls, monkeypatch, name, options, shape, training
) -> None:
    """Output, gradients and buffers after one step of the Triton path equal the torch formula's in
    float64."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    torch_module, triton_module = pair(name, options, torch.float64)
    torch_module.train(training), triton_module.train(training)
    with monkeypatch.context() as m:
        m.setattr(_planes, "TRITON_DEVICES", set())
        want = run(torch_module, x, g)
    got = run(triton_module, x, g)
    assert sum(triton_calls) == shape[0]  # every sample through the Triton path, once
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert value is not None and got[key] is not None, key
        torch.testing.assert_close(got[key], value, rtol=1e-9, atol=1e-10, msg=key)


@contextlib.contextmanager
def blocks_of(monkeypatch, size: int) -> Iterator[set[int | None]]:
    """Kernels with blocks of at most ``size`` (the cached plans, which hold blocks, dropped before and
    after); yields the set of ``BLOCK`` values launched (None for a kernel without one)."""
    monkeypatch.setattr(_triton, "MAX_BLOCK", size)
    blocks: set[int | None] = set()
    launch = _triton._launch
    monkeypatch.setattr(_triton, "_launch", lambda *a, **k: (blocks.add(k.get("BLOCK")), launch(*a, **k)))
    plans = (_triton.plan, _triton_switch.switch_plan)
    for plan in plans:
        plan.cache_clear()
    try:
        yield blocks
    finally:
        for plan in plans:
            plan.cache_clear()


LONG_PLANES = [case for case in CASES if torch.Size(case[2][2:]).numel() > 4 and case[0] != "switchnorm"]


@pytest.mark.parametrize(
    ("name", "options", "shape"), LONG_PLANES, ids=[f"{n}-{o}" for n, o, _ in LONG_PLANES]
)
def test_affine_family_kernels_loop_over_planes_longer_than_a_block(
    triton_calls, monkeypatch, name, options, shape
):
    """Blocks of 4 positions: the elementwise kernels run several programs per plane and the sums
    kernel loops over it, the last block masked."""
    with blocks_of(monkeypatch, 4) as blocks:
        assert_triton_path_equals_torch_formula(triton_calls, monkeypatch, name, options, shape, True)
    assert blocks - {None} == {4}  # every kernel with a block of positions (not the running statistics)


@pytest.mark.parametrize("name", ["frn", "batchrenorm"])
def test_parameter_gradients_sum_over_more_samples_than_a_block(triton_calls, monkeypatch, name):
    """Blocks of 2 samples: the gradients of w, b and t (FRN's τ) over 5 samples take three loop
    iterations, the last one masked; BatchRenorm's ∂L/∂w holds its r' and d'."""
    monkeypatch.setattr(_triton, "SAMPLE_BLOCK", _triton.tl.constexpr(2))
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, 2, 3, generator=gen, dtype=torch.float64) * 2 + 0.5
    g = torch.randn(5, 4, 2, 3, generator=gen, dtype=torch.float64)
    options = RENORM_FROM_THE_START if name == "batchrenorm" else {}
    torch_module, triton_module = pair(name, options, torch.float64)
    with monkeypatch.context() as m:
        m.setattr(_planes, "TRITON_DEVICES", set())
        want = run(torch_module, x, g)
    got = run(triton_module, x, g)
    assert triton_calls == [5]
    assert {"weight.grad", "bias.grad"} <= want.keys()
    for key in [k for k in want if k.endswith(".grad")]:
        torch.testing.assert_close(got[key], want[key], rtol=1e-9, atol=1e-10, msg=key)


def test_batchrenorm_backward_takes_its_forwards_step_and_statistics(triton_calls, monkeypatch):
    """r_max and d_max on a ramp (1 at step 0, then 1.125, 1.25; d_max 0, 1/6, 1/3), both clipping: three
    forwards, then the backward of the second. Outputs, gradients and running statistics equal the torch
    formula's: each launch reads the step and running statistics of its own forward, not the ones the
    later forwards moved."""
    options = {"r_max": 1.5, "d_max": 0.5, "warmup_steps": 0, "r_max_steps": 4, "d_max_steps": 3}
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(5, 4, 2, 3, generator=gen, dtype=torch.float64) * 2 + 0.5 for _ in range(3)]
    g = torch.randn(5, 4, 2, 3, generator=gen, dtype=torch.float64)

    def steps(module: torch.nn.Module) -> dict:
        inputs = [x.clone().requires_grad_() for x in xs]
        ys = [module(x) for x in inputs]
        ys[1].backward(g)
        out = {"y": torch.stack([y.detach() for y in ys]), "x.grad": inputs[1].grad}
        out |= {f"{k}.grad": p.grad for k, p in module.named_parameters()}
        return out | {k: b.clone() for k, b in module.named_buffers()}

    torch_module, triton_module = pair("batchrenorm", options, torch.float64)
    with monkeypatch.context() as m:
        m.setattr(_planes, "TRITON_DEVICES", set())
        want = steps(torch_module)
    got = steps(triton_module)
    assert triton_calls == [5, 5, 5] and int(got["num_batches_tracked"]) == 3
    assert got.keys() == want.keys() and {"weight.grad", "bias.grad"} <= got.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-9, atol=1e-10, msg=key)


@pytest.mark.parametrize(("name", "options", "shape"), FIRST_OF_EACH, ids=[n for n, _, _ in FIRST_OF_EACH])
def test_triton_path_under_bf16_autocast(triton_calls, name, options, shape):
    """bfloat16 input under autocast: bfloat16 output, and values and gradients within bf16 rounding of
    the float64 formula on the same (rounded) input."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).bfloat16()
    g = torch.randn(shape, generator=gen).bfloat16()
    module, reference = pair(name, options, torch.float32)
    got = run(module, x, g, autocast=True)
    assert triton_calls and got["y"].dtype == torch.bfloat16 and got["x.grad"].dtype == torch.bfloat16
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_planes, "TRITON_DEVICES", set())
        want = run(reference.double(), x.double(), g.double())
    for key, value in want.items():
        scale = value.abs().max().clamp(min=1)
        torch.testing.assert_close(got[key].double() / scale, value / scale, rtol=0, atol=3e-2, msg=key)


@pytest.mark.parametrize("positions", [1, 7, 16, 50])
def test_plane_moments_loop_over_planes_longer_than_a_block(monkeypatch, positions):
    """Blocks of 16: planes of 50 positions take four loop iterations, the last one masked."""
    assert _triton.INTERPRETED
    monkeypatch.setattr(_triton, "MAX_BLOCK", 16)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, positions, generator=gen, dtype=torch.float64) + 3
    mean, var = _triton.plane_moments(x)
    want_var, want_mean = torch.var_mean(x, dim=2, correction=0)
    torch.testing.assert_close(mean, want_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, want_var, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("options", "step", "limits"),
    [
        ({"r_max": 1.5, "d_max": 0.5, "warmup_steps": 0, "r_max_steps": 2, "d_max_steps": 3}, 5, [1.5, 0.5]),
        ({"r_max": 2.0, "d_max": 1.0, "warmup_steps": 2, "r_max_steps": 6, "d_max_steps": 6}, 4, [1.5, 0.5]),
        ({"r_max": 1.5, "d_max": 0.5, "warmup_steps": 3, "r_max_steps": 1, "d_max_steps": 2}, 3, [1.5, 0.5]),
        ({"r_max": 1.5, "d_max": 0.5, "warmup_steps": 4, "r_max_steps": 8, "d_max_steps": 6}, 2, [1.0, 0.0]),
    ],
    ids=["ramped", "ramping", "stepped", "warming-up"],
)
def test_batchrenorm_clips_r_and_d_on_both_sides(triton_calls, monkeypatch, options, step, limits):
    """Running statistics far from the batch's, per channel: r and d each clipped below, above and not
    at all by r_max = 1.5 and d_max = 0.5 (past the end of the ramps, in the middle of them, or at a
    step-function ramp), all clipped in warm-up (r_max = 1, d_max = 0: BatchNorm), r_max and d_max
    formed by the kernels from the step and the ramps; through the Triton path as in the torch formula
    (values, gradients, running statistics)."""
    torch_module, triton_module = pair("batchrenorm", options, torch.float64)
    for module in (torch_module, triton_module):  # batch: mean ≈ 0.5, std ≈ 2 in every channel
        module.running_mean.copy_(torch.tensor([4.0, -2.0, 0.4, 0.6]))
        module.running_var.copy_(torch.tensor([16.0, 0.25, 4.0, 3.0]))
        module.num_batches_tracked.fill_(step)
    assert torch_module.limits().tolist() == limits
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 4, 5, generator=gen, dtype=torch.float64) * 2 + 0.5
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    sigma_b = (x.var((0, 2), correction=0) + 1e-5).sqrt()
    r = sigma_b / (torch_module.running_var + 1e-5).sqrt()
    d = (x.mean((0, 2)) - torch_module.running_mean) / (torch_module.running_var + 1e-5).sqrt()
    assert (r < 1 / 1.5).any() and (r > 1.5).any() and ((r > 1 / 1.5) & (r < 1.5)).any()
    assert (d < -0.5).any() and (d > 0.5).any() and (d.abs() < 0.5).any()
    with monkeypatch.context() as m:
        m.setattr(_planes, "TRITON_DEVICES", set())
        want = run(torch_module, x, g)
    got = run(triton_module, x, g)
    assert triton_calls == [6]
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-9, atol=1e-10, msg=key)


@pytest.mark.parametrize("training", [True, False])
def test_switchnorm_kernels_loop_over_rows_columns_and_planes_longer_than_a_block(
    triton_calls, monkeypatch, training
):
    """Blocks of 2: SwitchNorm's pools over 5 samples and 4 channels and its sums over planes of 9
    positions take several loop iterations, the last one masked where the length is odd."""
    with blocks_of(monkeypatch, 2) as blocks:
        test_triton_path_equals_torch_formula_float64(
            triton_calls, monkeypatch, "switchnorm", {}, (5, 4, 3, 3), training
        )
    assert blocks == {2}


def test_plugins_with_a_torch_kernel_keep_it_below_native_below(triton_calls, monkeypatch):
    x = torch.randn(2, 6, 3, 3)
    monkeypatch.setattr(_planes, "NATIVE_BELOW", x.numel() + 1)
    for name in ("layernorm", "groupnorm", "instancenorm"):
        build_norm(name, 6)(x)
    assert not triton_calls
    build_norm("rmsnorm", 6)(x)  # no torch kernel for (N, C, H, W): the Triton path at every size
    # ghost BatchNorm's folded batch_norm costs more host time than its kernels at every size
    build_norm("ghost_batchnorm", 6, ghost_batch_size=1)(x)
    monkeypatch.setattr(_planes, "NATIVE_BELOW", x.numel())
    build_norm("layernorm", 6)(x)
    assert triton_calls == [2, 2, 2]


def test_channels_last_and_vmap_inputs_take_the_torch_formula(triton_calls):
    module = build_norm("layernorm", 6)
    x = torch.randn(2, 6, 3, 3).to(memory_format=torch.channels_last)
    y = module(x)
    assert not triton_calls and y.is_contiguous(memory_format=torch.channels_last)
    torch.func.vmap(module)(torch.randn(3, 2, 6, 3, 3))
    assert not triton_calls
    module(x.contiguous())
    assert triton_calls == [2]


def test_every_kernel_the_plugins_launch_compiles_for_an_h100():
    """What the interpreter cannot check: Triton's compiler accepts each kernel and specialization the
    plugins launch (bf16 storage, every plugin, training and eval) for sm_90, down to a cubin."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = [sys.executable, "scripts/compile_cuda.py", "--arch", "90", "--dtypes", "bf16"]
    done = subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    defined = {
        name for module in (_triton, _triton_switch) for name in vars(module) if name.endswith("_kernel")
    }
    compiled = set(done.stdout.splitlines()[0].split(": ")[1].split(", "))
    assert compiled == defined and done.stdout.splitlines()[-1].startswith("0 failed")


def test_host_cost_script_times_every_plugin_and_names_its_path(tmp_path):
    """scripts/host_cost.py (the CUDA path's host cost on the CPU): a row per registered plugin, the
    path each takes, and the GPU column from a norms_cuda.json."""
    out = tmp_path / "host.md"
    script = [sys.executable, "scripts/host_cost.py", "--rounds", "1", "--inner", "2", "--out", str(out)]
    done = subprocess.run(
        [*script, "--gpu", "reports/bench/norms_cuda.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    text = out.read_text()
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in text.splitlines() if line[:2] == "| "}
    torch_path = {"batchnorm", "sync_batchnorm", "frozen_batchnorm", "identity", "BatchNorm2d"}
    # named here, not read from this process's registry, which may hold the tests' own plugins
    triton_path = {case[0] for case in CASES} | {"ws_groupnorm"}  # ws_groupnorm: GroupNorm's path
    third_party = {
        n for n in rows.keys() - {"norm", "BatchNorm2d"} if not norm_spec(n).source.startswith("normbench.")
    }
    assert rows.keys() - third_party == torch_path | triton_path | {"norm"}  # installed plugins have rows too
    assert {name for name, path in rows.items() if path == "Triton"} == triton_path
    assert "Spearman rank correlation" in text


@pytest.fixture
def launched(monkeypatch) -> list[str]:
    """The name of each kernel launched, in order (the launches run)."""
    names: list[str] = []
    launch = _triton._launch
    monkeypatch.setattr(
        _triton,
        "_launch",
        lambda kernel, *a, **k: (names.append(kernel.fn.__name__), launch(kernel, *a, **k)),
    )
    return names


def test_profile_script_pieces_run_against_the_current_kernels(triton_calls, launched, monkeypatch):
    """scripts/profile_norm.py's pieces (run on a GPU, whose time is too scarce to find a stale call
    there) call the kernels' wrappers as they are now: each runs, and the launches it keys are the
    affine family's four."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    profile_norm = importlib.import_module("profile_norm")
    pieces = profile_norm.components(torch.randn(4, 6, 3, 3))
    family = ["_moments_kernel", "_affine_kernel", "_affine_sums_kernel", "_affine_input_grad_kernel"]
    assert launched == ["_moments_kernel", *family]  # the pieces' moments, then the recorded step
    for piece in pieces.values():
        piece()
    keys = pieces["keys of affine_family's 4 launches (part of their host time)"]()
    assert [key[0].fn.__name__ for key in keys] == family


def test_cuda_check_script_runs_the_triton_path_on_the_cpu(tmp_path, launched, monkeypatch, capsys):
    """scripts/check_cuda.py, which a GPU slot runs first, runs as it will there: with ``--device cpu``
    its ``triton`` rows go through the kernels (Triton's interpreter) and agree with float64; the
    devices it forces are restored; a path the CPU cannot run (compiled, or triton without the interpreter)
    is refused before any work."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    check_cuda = importlib.import_module("check_cuda")
    devices = set(_planes.TRITON_DEVICES)
    out = tmp_path / "check.md"
    argv = ["check_cuda.py", "--device", "cpu", "--norms", "switchnorm", "--precisions", "fp32"]
    monkeypatch.setattr(sys, "argv", [*argv, "--paths", "triton", "--out", str(out)])
    check_cuda.main()
    rows = [line for line in out.read_text().splitlines() if line.startswith("| fp32 |")]
    assert len(rows) == 1 and rows[0].startswith("| fp32 | switchnorm | (8, 16, 6, 6) | triton |")
    assert rows[0].endswith("| ok |")
    reproduce = (
        "TRITON_INTERPRET=1 PYTHONPATH=. python scripts/check_cuda.py --paths triton --norms switchnorm"
    )
    assert f"{reproduce} --precisions fp32 --device cpu --out FILE" in out.read_text()
    assert {"_pools_kernel", "_map_kernel", "_sums_kernel", "_input_grad_kernel"} <= set(launched)
    assert devices == _planes.TRITON_DEVICES
    monkeypatch.setattr(sys, "argv", [*argv, "--paths", "compiled", "--out", str(tmp_path / "no.md")])
    with pytest.raises(SystemExit):
        check_cuda.main()
    assert "--paths compiled: torch.compile of the formulas runs on CUDA only" in capsys.readouterr().err
    monkeypatch.setattr(_triton, "INTERPRETED", False)
    monkeypatch.setattr(sys, "argv", [*argv, "--paths", "triton", "--out", str(tmp_path / "no.md")])
    with pytest.raises(SystemExit):
        check_cuda.main()
    assert (
        "--paths triton on the CPU runs Triton's interpreter: set TRITON_INTERPRET=1"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "no.md").exists()


def test_a_launch_reuses_a_compiled_kernel_only_for_the_same_specialization(monkeypatch):
    """``_launch`` compiles through ``kernel[grid]`` and reuses the result for a later call only when the
    dtypes, the 16-byte alignment of the tensors and the other arguments are the same; the reuse calls
    Triton's launcher with the grid, the stream, the arguments and then the constexprs in the kernel's
    order."""

    class Compiled:
        function, packed_metadata = "function", "metadata"

        def __init__(self) -> None:
            self.runs: list[tuple] = []

        def run(self, *args) -> None:
            self.runs.append(args)

    class Kernel:
        arg_names = ("x_ptr", "n", "eps", "BLOCK", "ACC")

        def __init__(self) -> None:
            self.compiled: list[Compiled] = []

        def __getitem__(self, grid):
            def compile_and_run(*args, **constexprs) -> Compiled:
                self.compiled.append(Compiled())
                return self.compiled[-1]

            return compile_and_run

    monkeypatch.setattr(_triton, "INTERPRETED", False)
    monkeypatch.setattr(_triton, "FAST_LAUNCH", True)  # as on the Triton versions where it was measured
    monkeypatch.setattr(_triton, "_compiled", {})
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 7, raising=False)
    kernel, x = Kernel(), torch.zeros(16)
    for _ in range(2):
        _triton._launch(kernel, (3,), x, 5, 0.5, ACC="f32", BLOCK=4)
    assert len(kernel.compiled) == 1
    assert kernel.compiled[0].runs == [
        (3, 1, 1, 7, "function", "metadata", None, None, None, x, 5, 0.5, 4, "f32")
    ]
    for other in [(x[1:], 5, 0.5), (x.double(), 5, 0.5), (x, 16, 0.5), (x, 1, 0.5)]:
        _triton._launch(kernel, (3,), *other, ACC="f32", BLOCK=4)
    _triton._launch(kernel, (3,), x, 5, 0.5, ACC="f64", BLOCK=4)
    assert len(kernel.compiled) == 6 and not any(c.runs for c in kernel.compiled[1:])
    monkeypatch.setattr(_triton, "MAX_COMPILED", 3)  # many shapes: the cache starts over, not grows
    for n in range(2, 6):
        _triton._launch(kernel, (3,), x, n, 0.5, ACC="f32", BLOCK=4)
    assert len(_triton._compiled) <= 3


def test_the_private_launcher_is_taken_only_on_the_measured_triton_versions(monkeypatch):
    """Anywhere else every launch goes through Triton's public ``kernel[grid](...)``, each time."""
    version = tuple(int(v) for v in _triton.triton.__version__.split(".")[:2])
    assert (version in _triton.FAST_LAUNCH_TRITON) == _triton.FAST_LAUNCH
    launched = []

    class Kernel:
        arg_names = ("x_ptr", "BLOCK")

        def __getitem__(self, grid):
            return lambda *args, **constexprs: launched.append((grid, args, constexprs))

    monkeypatch.setattr(_triton, "INTERPRETED", False)
    monkeypatch.setattr(_triton, "FAST_LAUNCH", False)
    monkeypatch.setattr(_triton, "_compiled", {})
    x = torch.zeros(4)
    for _ in range(3):
        _triton._launch(Kernel(), (2,), x, BLOCK=4)
    assert len(launched) == 3 and _triton._compiled == {}


@pytest.mark.parametrize("name", ["layernorm", "switchnorm"])
def test_a_double_backward_through_the_kernels_fails_loudly(triton_calls, name):
    """The kernels' gradients carry no graph: under create_graph a backward through them raises (torch's
    once_differentiable) instead of silently missing the second-order terms; a plain backward does not
    build one."""
    module = build_norm(name, 4)
    x = torch.randn(3, 4, 2, 3, requires_grad=True)
    (plain,) = torch.autograd.grad(module(x).square().sum(), x)
    assert plain.grad_fn is None
    (grad,) = torch.autograd.grad(module(x).square().sum(), x, create_graph=True)
    torch.testing.assert_close(grad.detach(), plain)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()
    assert len(triton_calls) == 2


def test_every_launch_passes_tensors_to_the_kernels_leading_pointer_parameters_alone(
    triton_calls, monkeypatch
):
    """``_launch`` keys a pointer by dtype and alignment and any other argument by value: each kernel's
    pointers (``*_ptr``) come first, and every plugin passes tensors to them and to nothing else."""
    launches: list[tuple] = []
    launch = _triton._launch
    monkeypatch.setattr(
        _triton,
        "_launch",
        lambda kernel, grid, *a, **k: (launches.append((kernel, a)), launch(kernel, grid, *a, **k)),
    )
    for name, options, shape in FIRST_OF_EACH:
        module = build_norm(name, 4, **options)
        for training in (True, False):
            run(module.train(training), torch.randn(shape), torch.randn(shape))
    names = {kernel.fn.__name__ for kernel, _ in launches}
    assert {"_affine_input_grad_kernel", "_pools_backward_kernel"} <= names
    for kernel, args in launches:
        pointers = [name.endswith("_ptr") for name in kernel.arg_names]
        k = _triton._pointer_count(kernel)
        assert not any(pointers[k:]), kernel.fn.__name__
        assert [isinstance(a, torch.Tensor) for a in args] == pointers[: len(args)], kernel.fn.__name__
